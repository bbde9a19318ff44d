# build args for this machine (no Docker Hub: a debootstrapped base; the PyTorch CPU index unreachable:
# the torch 2.13.0+cpu wheel and its deps served from a local directory on the docker bridge; a
# TLS-intercepting egress: its CA certificates)
export BASE_IMAGE=local/debian:bookworm
export TORCH_INDEX_URL=http://172.17.0.1:8099/ PIP_TRUSTED_HOST=172.17.0.1
export EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
