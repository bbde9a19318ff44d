"""`--server URL --model NAME`: score on a model server (vLLM or any OpenAI-compatible one) instead of
in process. Shared by label, demo and the benchmarks. The API key comes from ICM_SERVER_API_KEY (or
OPENAI_API_KEY), never from the command line (it would land in shell history and `ps`)."""

from __future__ import annotations

import os


def add_server_args(p) -> None:
    g = p.add_argument_group("model server (instead of the in-process model)")
    g.add_argument("--server", default=os.environ.get("ICM_SERVER_URL") or None, metavar="URL",
                   help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (default: env ICM_SERVER_URL); "
                        "--model then names the served model; API key from env ICM_SERVER_API_KEY or OPENAI_API_KEY")
    g.add_argument("--tokenizer", metavar="NAME_OR_DIR",
                   help="with --server: the served model's tokenizer, loaded locally (prompts are tokenised here): a local "
                        "HF folder, a hub id in the local cache, gemma3-270m or smollm2-135m (default: --model, else "
                        "the path the server reports in /v1/models, as vLLM does, where this machine can load it)")
    g.add_argument("--server-retry-s", type=float, default=120.0, metavar="S",
                   help="with --server: how long to retry a server that is down or overloaded (default 120)")


def remote_scorer(args):
    """A RemoteScorer when --server is given, else None."""
    if not getattr(args, "server", None):
        return None
    from icm_backend.engine.remote import RemoteScorer
    from icm_backend.errors import InputError

    if not args.model:
        raise InputError("--server: --model must name the model the server serves (see its /v1/models)")
    return RemoteScorer(args.server, args.model, tokenizer=args.tokenizer or args.model,
                        api_key=os.environ.get("ICM_SERVER_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
                        retry_s=args.server_retry_s)


def add_dtype_arg(p) -> None:
    """`--dtype` of the in-process model (env ICM_DTYPE), shared by label and demo."""
    from icm_backend.engine.model import DTYPE_CHOICES

    default = (os.environ.get("ICM_DTYPE") or "auto").strip().lower()
    if default not in DTYPE_CHOICES:
        from icm_backend.errors import InputError

        raise InputError(f"ICM_DTYPE={os.environ.get('ICM_DTYPE')!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    p.add_argument("--dtype", default=default, choices=DTYPE_CHOICES,
                   help="number format of the in-process model: auto (bf16 on CUDA and on CPUs with native bf16, "
                        "AVX512-BF16 or AMX; fp32 on others, where bf16 is emulated and 5-8x slower), bf16, fp32 "
                        "(default: env ICM_DTYPE, else auto)")
