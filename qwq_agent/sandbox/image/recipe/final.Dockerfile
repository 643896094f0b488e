# Final stage: the supervisor on top of the Debian base image (built locally; no registry needed).
# WORKDIR /workspace and ENV come from the base (docker import --change); each extra instruction costs a
# container commit with the legacy builder, so this file stays short: one COPY of a prepared tree and
# one RUN for the account files and git's default identity.
ARG BASE
FROM ${BASE}
ARG RECIPE_HASH
# root/ holds /opt/qwq/supervisor/*.py (root-owned, mode 0644) and /usr/local/bin/python (models type
# `python`). The container starts as root holding only the capabilities the supervisor keeps
# (SandboxConfig.cap_add); boot.py moves the supervisor to its own uid and user code runs under a uid
# drawn per sandbox (SandboxConfig.sandbox_user).
COPY root/ /
USER 0:0
# /etc/passwd and /etc/group lead into /run/qwq, where a sandbox mounts a tmpfs and the supervisor names
# that sandbox's own uid at start-up (supervisor/accounts.py, from the image's entries kept as *.image).
# Without that mount (a plain `docker run`) they lead to copies of the image's own.
# /etc/gitconfig: a default identity, so that `git commit` works in a sandbox (git cannot guess an email
# there); system-level, so a repository's or the user's own identity wins.
RUN mkdir -p /run/qwq && for f in passwd group; do cp -p /etc/$f /etc/$f.image \
    && mv /etc/$f /run/qwq/$f && ln -s /run/qwq/$f /etc/$f; done \
    && printf '[user]\n\tname = sandbox\n\temail = sandbox@qwq-agent.invalid\n' > /etc/gitconfig
USER 1000:1000
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-I", "-u", "/opt/qwq/supervisor/boot.py"]
LABEL qwq-agent.image=1 qwq-agent.recipe-hash=${RECIPE_HASH} qwq-agent.build-mode=debian
