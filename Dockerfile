# syntax=docker/dockerfile:1
# The moa-batch image: one image for every part (API, worker pools, beat, Flower,
# migrations); docker-compose.yml picks the part with the command after `moa`.
#
#   docker build -t moa-batch .                              # API, workers, beat, Flower
#   docker build -t moa-batch:local --build-arg MOA_EXTRAS=local .   # + llama.cpp and gemma-3-270m
#
# MOA_EXTRAS is a comma-separated list of the optional dependency groups in
# pyproject.toml. `local` compiles llama-cpp-python from source (several minutes).

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into /opt/venv ---------------------------
FROM ${PYTHON_IMAGE} AS build
ARG MOA_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# llama-cpp-python has no binary wheel for Linux on PyPI: it needs a C/C++ toolchain.
RUN case ",${MOA_EXTRAS}," in \
        *,local,*) apt-get update \
            && apt-get install -y --no-install-recommends build-essential \
            && rm -rf /var/lib/apt/lists/* ;; \
    esac

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .
RUN pip install ".${MOA_EXTRAS:+[$MOA_EXTRAS]}"

# --- runtime: the virtualenv, a non-root user, `moa` as the entrypoint ------------------------
FROM ${PYTHON_IMAGE}
ARG MOA_EXTRAS=""

# llama.cpp is built with OpenMP: the runtime needs libgomp.
RUN case ",${MOA_EXTRAS}," in \
        *,local,*) apt-get update \
            && apt-get install -y --no-install-recommends libgomp1 \
            && rm -rf /var/lib/apt/lists/* ;; \
    esac \
    && groupadd --system --gid 10001 moa \
    && useradd --system --uid 10001 --gid moa --create-home --home-dir /home/moa moa \
    && install -d -o moa -g moa /app /home/moa/.cache /home/moa/.moa

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MOA_HOME=/home/moa/.moa

USER moa
# A moa.toml in the working directory is merged over the packaged defaults:
# mount one at /app/moa.toml (or set MOA_CONFIG).
WORKDIR /app

EXPOSE 8000 5555
ENTRYPOINT ["moa"]
CMD ["--help"]
