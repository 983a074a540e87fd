"""The demo's stand-in slurmrestd (gateway.demo.standin) as a service of the local stack: it answers Slurm's job
submit, job, jobs and ping routes from memory (and keeps every request it saw, so restart it now and then)."""

import os

from aiohttp import web

from gateway.demo.standin import StandinState, standin_app


def main() -> None:
    host = os.environ.get("STANDIN_HOST", "0.0.0.0")
    port = int(os.environ.get("STANDIN_PORT", "6820"))
    web.run_app(standin_app(StandinState()), host=host, port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
