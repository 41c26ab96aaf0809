"""An OpenAI-compatible HTTP server for mistral_hub models.

`create_app()` builds the ASGI app (Starlette) and `serve()` runs it under
uvicorn; `mistral-hub serve PRESET` does both from the shell. Needs the
`serve` extra: `pip install "mistral-hub[serve]"`.
"""

from mistral_hub.server.app import create_app


def serve(causal_lm, host="127.0.0.1", port=8000, log_level="info", **kwargs):
    """Serves `causal_lm` with the OpenAI API until interrupted.

    Args:
        causal_lm: a `CausalLM` with a preprocessor.
        host: str. Interface to listen on; the default only accepts
            connections from this machine.
        port: int. TCP port.
        log_level: uvicorn's log level (`"info"`, `"warning"`, ...).
        **kwargs: `create_app()` arguments (`model_name`, `api_key`,
            `context_length`, `max_batch_size`, `batch_window`, ...).

    Example:

    ```python
    from mistral_hub import MistralCausalLM
    from mistral_hub.server import serve

    serve(MistralCausalLM.from_preset("mistral_hub_demo"), port=8000)
    ```
    """
    import uvicorn

    app = create_app(causal_lm, **kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["create_app", "serve"]
