# syntax=docker/dockerfile:1
# One image for the API, the workers and the migration (`ml3 serve|worker|db upgrade`).
# Stage `build` installs torch and ml3 into a virtual environment; the runtime stage copies only
# that environment and the source, and runs as an unprivileged user.
#
# Build arguments:
#   TORCH_INDEX_URL  required: the PyTorch wheel index, without the variant (no download host is
#                    written into this repository; pass your index or mirror)
#   TORCH            the variant under that index: cpu (default) or a CUDA one such as cu126
#   TORCH_VERSION    2.13.0 (the version the tests run with)
#   PIP_INDEX_URL    the index for every other package (pip's default when not given)
#
#   docker build --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" -t ml3:cpu .
#   docker build --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" --build-arg TORCH=cu126 -t ml3:cuda .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN test -n "$TORCH_INDEX_URL" || { echo "set --build-arg TORCH_INDEX_URL=<PyTorch index>" >&2; exit 1; }
RUN python -m venv /opt/ml3
ENV PATH=/opt/ml3/bin:$PATH
# torch first, from its own index: ml3's torch range is then met and pip never resolves another
RUN pip install --index-url "${TORCH_INDEX_URL%/}/${TORCH}" "torch==${TORCH_VERSION}"
WORKDIR /srv/ml3
COPY pyproject.toml README.md alembic.ini ./
COPY ml3_cli.py ./
COPY ml3core ml3core
COPY app app
COPY worker worker
COPY migrations migrations
# the server install, with ONNX export (app/ and worker/ are not in the wheel, which holds ml3core only): editable in compat
# mode, which puts /srv/ml3 on sys.path, so app/, worker/ and the migrations beside them are used in place;
# the runtime stage keeps the source at this path
RUN pip install -e '.[server,export]' --config-settings editable_mode=compat

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 ml3 && mkdir -p /data && chown ml3 /data
COPY --from=build /opt/ml3 /opt/ml3
COPY --from=build /srv/ml3 /srv/ml3
ENV PATH=/opt/ml3/bin:$PATH PYTHONUNBUFFERED=1 MPLBACKEND=Agg ML3_DATA_DIR=/data
WORKDIR /srv/ml3
USER ml3
EXPOSE 8000
CMD ["ml3", "serve", "--host", "0.0.0.0"]
