# Registry path: the same content on python:3.12-slim, used only when a registry answers
# (QWQ_SANDBOX_BUILD=dockerfile, or auto with a reachable registry). Context: this file + root/ (see final.Dockerfile).
FROM python:3.12-slim
ARG RECIPE_HASH
RUN apt-get update \
    && apt-get upgrade -y \
    && apt-get install -y --no-install-recommends ripgrep git bash coreutils ca-certificates procps tini \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
    && pip install --no-cache-dir numpy pandas matplotlib sympy scipy ipykernel \
    && groupadd --gid 1000 sandbox \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/sandbox --shell /bin/bash sandbox \
    && install -d -m 0755 -o 1000 -g 1000 /workspace \
    && mkdir -p /etc/matplotlib && echo 'backend: Agg' > /etc/matplotlib/matplotlibrc
ENV LANG=C.UTF-8 \
    MPLBACKEND=Agg \
    MATPLOTLIBRC=/etc/matplotlib/matplotlibrc \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/sandbox
COPY root/ /
# /etc/passwd and /etc/group lead into /run/qwq, where a sandbox mounts a tmpfs and the supervisor names
# that sandbox's own uid at start-up (supervisor/accounts.py, from the image's entries kept as *.image).
# Without that mount (a plain `docker run`) they lead to copies of the image's own.
# /etc/gitconfig: a default identity, so that `git commit` works in a sandbox (git cannot guess an email
# there); system-level, so a repository's or the user's own identity wins.
RUN mkdir -p /run/qwq && for f in passwd group; do cp -p /etc/$f /etc/$f.image \
    && mv /etc/$f /run/qwq/$f && ln -s /run/qwq/$f /etc/$f; done \
    && printf '[user]\n\tname = sandbox\n\temail = sandbox@qwq-agent.invalid\n' > /etc/gitconfig
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-I", "-u", "/opt/qwq/supervisor/boot.py"]
LABEL qwq-agent.image=1 qwq-agent.recipe-hash=${RECIPE_HASH} qwq-agent.build-mode=dockerfile
