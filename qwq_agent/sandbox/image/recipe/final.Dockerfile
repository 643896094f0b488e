# Final stage: the supervisor on top of the Debian base image (built locally; no registry needed).
# USER 1000:1000, WORKDIR /workspace and ENV come from the base (docker import --change); each extra
# instruction costs a container commit with the legacy builder, so this file stays short.
ARG BASE
FROM ${BASE}
ARG RECIPE_HASH
# The build context gives supervisor.py mode 0644; COPY keeps it (root-owned, readable by all).
COPY supervisor.py /opt/qwq/supervisor.py
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-u", "/opt/qwq/supervisor.py"]
LABEL qwq-agent.image=1 qwq-agent.recipe-hash=${RECIPE_HASH} qwq-agent.build-mode=debian
