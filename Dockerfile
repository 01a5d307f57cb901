# One image for every Khalsi process (API, BentoML, Prefect worker, MLflow server, jobs).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    KHALSI_HOME=/var/lib/khalsi

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir uv==0.13.9

WORKDIR /app
# Dependencies first (cached while only code changes), exactly as locked.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY khalsi ./khalsi
COPY flows ./flows
COPY features ./features
COPY training ./training
COPY serving ./serving
COPY api ./api
RUN uv sync --frozen --no-dev \
    && useradd --system --uid 10001 --home-dir /var/lib/khalsi --create-home khalsi
USER khalsi
EXPOSE 8080 3000 5000
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8080"]
