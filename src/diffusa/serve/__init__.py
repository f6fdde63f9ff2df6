"""`diffusa serve`: a web page and a REST API over the pipelines, on loopback unless told otherwise.

    from diffusa.serve import create_app
    app = create_app(runs="runs", history="diffusa-history")      # FastAPI: /api/..., /docs, the page at /

`app` (the application), `api` (REST routes: generate, edit, inpaint, upscale), `schema` (the request bodies and
their limits), `images` (an edit's image and mask: base64 PNGs checked from their header before decoding, held-out
digits), `ui` (the Gradio page), `models` (names -> folders, never outside --runs), `history` (the gallery on
disk), `jobs` (the bounded queue and the one generation at a time), `guard` (host, token, origin, body size),
`limits` (every limit). docs/serve.md.
"""

from __future__ import annotations

from diffusa.serve.app import create_app

__all__ = ["create_app"]
