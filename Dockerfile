# The platform image: API, worker and migrations are the same image with different commands.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api api/
COPY activities activities/
COPY cli cli/
COPY core core/
COPY records records/
COPY migrations migrations/
COPY runtimes runtimes/
COPY builds builds/
COPY gateway gateway/
COPY worker worker/
COPY workflows workflows/
RUN pip install --no-cache-dir -e .
RUN useradd --create-home mcphost && mkdir -p /var/lib/mcphost && chown mcphost /var/lib/mcphost
USER mcphost
ENV STATE_DIR=/var/lib/mcphost
EXPOSE 3000
CMD ["mcphost", "api"]
