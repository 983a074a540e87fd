# exportgate: slim image, non-root, admin /healthz as the health check.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/exportgate --create-home exportgate
COPY --from=build /install /usr/local
COPY policies /etc/exportgate/policies
ENV EXPORTGATE_POLICY_DIR=/etc/exportgate/policies \
    EXPORTGATE_LEDGER_DIR=/var/lib/exportgate/ledger \
    EXPORTGATE_ADMIN_HOST=0.0.0.0 \
    EXPORTGATE_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
USER exportgate
WORKDIR /var/lib/exportgate
VOLUME ["/var/lib/exportgate/ledger"]
EXPOSE 8080 9180
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9180/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["exportgate", "serve"]
