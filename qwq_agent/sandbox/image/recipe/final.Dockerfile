# Final stage: the supervisor on top of the Debian base image (built locally; no registry needed).
# WORKDIR /workspace and ENV come from the base (docker import --change); each extra instruction costs a
# container commit with the legacy builder, so this file stays short: one COPY of a prepared tree.
ARG BASE
FROM ${BASE}
ARG RECIPE_HASH
# root/ holds /opt/qwq/supervisor/*.py (root-owned, mode 0644) and /usr/local/bin/python (models type
# `python`). The container starts as root holding only the capabilities the supervisor keeps
# (SandboxConfig.cap_add); boot.py moves the supervisor to its own uid and user code runs as 1000.
COPY root/ /
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-I", "-u", "/opt/qwq/supervisor/boot.py"]
LABEL qwq-agent.image=1 qwq-agent.recipe-hash=${RECIPE_HASH} qwq-agent.build-mode=debian
