"""nginx configurations of the peers benchmark: the scheduler-shaped upstream and the auth_request peer."""

from pathlib import Path

META = '"meta":{"plugin":{"type":"openapi/v0.0.38","name":"Slurm OpenAPI v0.0.38"}},"errors":[]'

# A job id unique for the life of the nginx process: the connection's serial number followed by
# the request's number on that connection, zero-padded to 6 digits (keepalive_requests stays below 10^6).
JOB_SEQ_MAP = """
  map $connection_requests $eg_seq {
    "~^(\\d)$" 00000$1;  "~^(\\d\\d)$" 0000$1;  "~^(\\d{3})$" 000$1;
    "~^(\\d{4})$" 00$1;  "~^(\\d{5})$" 0$1;     default $connection_requests;
  }
"""

SUBMIT_BODY = "{" + META + ',"job_id":$connection$eg_seq,"step_id":"BATCH","job_submit_user_msg":""}'
PING_BODY = "{" + META + ',"pings":[{"hostname":"bench","ping":"UP","status":0,"mode":"primary"}]}'
JOB_BODY = (
    "{" + META + ',"jobs":[{"job_id":$1,"job_state":"PENDING","name":"bench","user_name":"acme",'
    '"time_limit":{"set":true,"infinite":false,"number":60}}]}'
)
NOT_FOUND = "{" + META[: -len('"errors":[]')] + '"errors":[{"error_code":2017,"error":"Invalid job id specified"}]}'
REFUSED_451 = (
    '{"type":"about:blank","title":"Unavailable for export-control reasons","status":451,"code":"tier3_embargoed"}'
)


def _main(workdir: Path, http: str) -> str:
    temp = "".join(
        f"  {kind}_temp_path {workdir / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log off;
  server_tokens off;
  default_type application/json;
  keepalive_requests 999999;
  keepalive_timeout 120s;
{temp}{http}}}
"""


def upstream_conf(workdir: Path, port: int) -> str:
    """The stand-in scheduler: `return 200` with Slurm v0.0.38 bodies; each submission gets a new job id."""
    return _main(
        workdir,
        f"""{JOB_SEQ_MAP}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /slurm/v0.0.38/ping {{ return 200 '{PING_BODY}'; }}
    location = /slurm/v0.0.38/job/submit {{ return 200 '{SUBMIT_BODY}'; }}
    location ~ ^/slurm/v0\\.0\\.38/job/([0-9]+)$ {{ return 200 '{JOB_BODY}'; }}
    location / {{ return 500 '{NOT_FOUND}'; }}
  }}
""",
    )


def auth_request_conf(workdir: Path, port: int, upstream_port: int, auth_port: int) -> str:
    """nginx in front of the upstream, each request checked first by the auth service (`auth_request`).

    The service's 401 is passed on; its 403 (unknown or Tier 3 tenant) becomes a 451 problem;
    the tenant's Slurm user is sent upstream in X-SLURM-USER-NAME and the client's token is not.
    """
    return _main(
        workdir,
        f"""
  upstream scheduler {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  upstream auth {{ server 127.0.0.1:{auth_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 1m;
    location = /_auth {{
      internal;
      proxy_pass http://auth/verify;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Authorization $http_authorization;
    }}
    location @refused {{
      default_type application/problem+json;
      return 451 '{REFUSED_451}';
    }}
    location / {{
      auth_request /_auth;
      auth_request_set $eg_slurm_user $upstream_http_x_slurm_user;
      error_page 403 = @refused;
      proxy_pass http://scheduler;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
      proxy_set_header X-SLURM-USER-NAME $eg_slurm_user;
    }}
  }}
""",
    )


def exportgate_conf(workdir: Path, site: str) -> str:
    """nginx in front of the upstream as `exportgate nginx-config` writes it (`site`), in this benchmark's frame."""
    return _main(workdir, site)
