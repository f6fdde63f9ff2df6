"""Kinds of training, each a `diffusa.engine.Task` in a file of its own: diffusion, the autoencoder of latent
diffusion, the noise-aware classifier of classifier guidance, consistency distillation (`tasks.consistency`),
consistency training without a teacher (`tasks.ict`) and reflow, a rectified flow trained on a teacher's ODE pairs
(`tasks.reflow`)."""
