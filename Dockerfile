# exportgate: slim image, non-root, admin /healthz as the health check.
# Dependencies are installed at the exact versions of constraints/lock.txt (`make lock`); the bundled policy
# pack and example registry are package data (gateway/policies) and are also copied to /etc/exportgate/policies,
# the EXPORTGATE_POLICY_DIR below, where a mounted volume or ConfigMap can replace them.
FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints/lock.txt ./constraints/lock.txt
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
RUN pip install --no-cache-dir --prefix=/install -c constraints/lock.txt .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 exportgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/exportgate --create-home exportgate
COPY --from=build /install /usr/local
COPY gateway/policies /etc/exportgate/policies
ENV EXPORTGATE_POLICY_DIR=/etc/exportgate/policies \
    EXPORTGATE_LEDGER_DIR=/var/lib/exportgate/ledger \
    EXPORTGATE_ADMIN_HOST=0.0.0.0 \
    EXPORTGATE_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
# Numeric, so a runtime can tell the image does not run as root (Kubernetes runAsNonRoot).
USER 10001:10001
WORKDIR /var/lib/exportgate
VOLUME ["/var/lib/exportgate/ledger"]
EXPOSE 8080 9180
# Exec form (no shell in between); the admin port follows EXPORTGATE_ADMIN_PORT when it is set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('EXPORTGATE_ADMIN_PORT') or '9180'; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["exportgate", "serve"]
