"""docker/ validated statically: no Docker engine runs in CI or here."""

from __future__ import annotations

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


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
    assert ls["image"].endswith(":1.23.2")
    assert "8080:8080" in ls["ports"] and any(p.endswith("9090:9090") for p in be["ports"])
    for svc in (ls, be):
        hc = svc["healthcheck"]
        assert "/health" in " ".join(hc["test"]) and hc["interval"] and hc["retries"]
    vols = " ".join(be["volumes"])
    assert ":/data" in vols and ":/root/.cache" in vols
    assert be["depends_on"]["label-studio"]["condition"] == "service_healthy"
    assert "host.docker.internal:host-gateway" in be["extra_hosts"]
    assert (DOCKER / be["build"]["context"] / be["build"]["dockerfile"]).exists()


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
    assert text.startswith("#") and "\nFROM python:3.11" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "icm-backend serve" in text and "EXPOSE 9090" in text
    for path in ("pyproject.toml", "icm_backend", "label_config"):
        assert f"COPY {path}" in text and (DOCKER.parent / path).exists()


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
    assert be["depends_on"]["vllm"] == {"condition": "service_healthy", "required": False}
    cache = [v.split(":")[0] for v in vllm["volumes"] if v.endswith(":/root/.cache/huggingface")]
    assert cache and any(v.startswith(cache[0] + ":") for v in be["volumes"])
    assert env_of(vllm)["VLLM_API_KEY"] == "${ICM_SERVER_API_KEY:-}"  # one key on both sides
    assert "http://vllm:8000/v1" in (DOCKER / "docker-compose.yml").read_text()
