# Final stage: the supervisor on top of the Debian base image (built locally; no registry needed).
ARG BASE
FROM ${BASE}
# The build context gives supervisor.py mode 0644; COPY keeps it (root-owned, readable by all).
COPY supervisor.py /opt/qwq/supervisor.py
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-u", "/opt/qwq/supervisor.py"]
