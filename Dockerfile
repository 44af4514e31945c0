# One image for both sides of bench-ingest.
#
#   docker build -t bench-ingest .
#   docker run --env-file ingest.env -p 8000:8000 bench-ingest           # the ingest app
#   docker run --env-file runner.env -v bench-runner:/var/lib/bench-runner \
#       bench-ingest bench-runner daemon                                 # the runner
#
# The runner takes AWS credentials from the instance role (IMDS; allow a hop
# limit of 2 for containers) or boto3's usual variables, never from a file
# baked into the image. Environment files: deploy/*.env.example.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs to build: a code change does not invalidate the
# layers above, and nothing from the working tree (keys, venvs) gets in.
COPY setup.cfg pyproject.toml README.md ./
COPY bench_contract ./bench_contract
COPY ingest_app ./ingest_app
COPY runner ./runner
# The sources are removed after a regular (non-editable) install, so the image
# runs the installed package, templates and static files included. Versions
# come from setup.cfg's ranges (DL3013 asks for pins on a local install too).
# hadolint ignore=DL3013
RUN pip install --no-compile '.[ingest,runner]' \
    && rm -rf build ./*.egg-info bench_contract ingest_app runner

# gunicorn reads ./gunicorn.conf.py from its working directory.
COPY gunicorn.conf.py ./

# An unprivileged user; the runner's outbox is a volume it owns.
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin bench \
    && install -d -o bench -g bench -m 0700 /var/lib/bench-runner
USER 10001:10001
ENV BENCH_RUNNER_STATE_DIR=/var/lib/bench-runner \
    PORT=8000
VOLUME ["/var/lib/bench-runner"]
EXPOSE 8000

CMD ["gunicorn", "ingest_app:create_app()"]
