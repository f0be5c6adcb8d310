"""A page of the Dask dashboard that shows a daskcubes run as a whole.

Dask's own progress panel counts the tasks the scheduler knows of, and a daskcubes run
hands the scheduler its tasks in waves, releasing each as it finishes (so that a million
cubes never sit in the scheduler at once): the panel shows the wave in flight, not the
run. The driver, which learns of every finished task, publishes the run's progress into
the scheduler's metadata (:data:`METADATA_KEY`), and the page at ``/daskcubes`` beside the
dashboard's own pages shows it: done of the total, the rate and the time left, refreshed
every second; ``/daskcubes/progress.json`` gives the same as JSON.

The page is mounted as distributed mounts its own: this module's :data:`routes`, named
in the setting ``distributed.scheduler.http.routes`` when daskcubes starts the cluster
(:mod:`daskcubes.runtime.executors`). On a cluster someone else started, the scheduler
plugin :class:`ProgressPage` adds the same routes once it runs there.
"""

from __future__ import annotations

import json
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.http.utils import RequestHandler

#: The scheduler metadata key the driver publishes a run's progress under.
METADATA_KEY = "daskcubes-progress"
#: The page's path on the dashboard's server.
PAGE = "daskcubes"

_HTML = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>daskcubes: run progress</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
#bar { width: 40em; height: 1.6em; border: 1px solid #888; }
#done { height: 100%; width: 0; background: #2b7bb9; }
td { padding: 0.2em 1em 0.2em 0; }
</style></head>
<body>
<h1>daskcubes</h1>
<p id="stage">waiting for a run</p>
<div id="bar"><div id="done"></div></div>
<table>
<tr><td>done</td><td id="made">-</td></tr>
<tr><td>tasks</td><td id="tasks">-</td></tr>
<tr><td>rate</td><td id="rate">-</td></tr>
<tr><td>time left</td><td id="left">-</td></tr>
</table>
<script>
function duration(s) {
  if (!isFinite(s)) return "-";
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = Math.round(s % 60);
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + r + " s";
}
async function refresh() {
  try {
    const url = location.pathname.replace(/\/?$/, "/") + "progress.json";
    const p = await (await fetch(url, {cache: "no-store"})).json();
    if (p.stage) {
      const now = p.finished || Date.now() / 1000;
      const rate = (p.made - p.resumed) / Math.max(now - p.started, 1e-9);
      document.getElementById("stage").textContent =
        p.stage + (p.finished ? " finished" : " running") + ": " + p.path;
      document.getElementById("made").textContent =
        p.made.toLocaleString("en") + " of " + p.total.toLocaleString("en") + " " + p.unit +
        " (" + (100 * p.made / p.total).toFixed(1) + "%)";
      document.getElementById("tasks").textContent =
        p.tasks_done.toLocaleString("en") + " of " + p.tasks.toLocaleString("en");
      document.getElementById("rate").textContent = rate.toFixed(1) + " " + p.unit + "/s";
      document.getElementById("left").textContent =
        p.finished ? "0 s" : duration((p.total - p.made) / rate);
      document.getElementById("done").style.width = (100 * p.made / p.total) + "%";
    }
  } catch (e) {}
  setTimeout(refresh, 1000);
}
refresh();
</script></body></html>
"""


class _Page(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(_HTML)


class _Progress(RequestHandler):
    def get(self) -> None:
        progress = self.server.get_metadata([METADATA_KEY], default=None) or {}
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(progress))


#: The page's routes, as distributed's ``distributed.scheduler.http.routes`` modules give
#: theirs (each handler gets the scheduler as ``dask_server``).
routes: list[tuple[str, type, dict[str, Any]]] = [
    (rf"/{PAGE}/progress.json", _Progress, {}),
    (rf"/{PAGE}/?", _Page, {}),
]


class ProgressPage(SchedulerPlugin):
    """Adds the page's :data:`routes` to a running scheduler's dashboard server (a
    cluster daskcubes did not start)."""

    name = "daskcubes-progress-page"

    async def start(self, scheduler: Any) -> None:
        application = getattr(scheduler, "http_application", None)
        if application is None or getattr(scheduler, "_daskcubes_page", False):
            return
        application.add_handlers(
            ".*$",
            [
                (path, handler, {**kwargs, "dask_server": scheduler})
                for path, handler, kwargs in routes
            ],
        )
        scheduler._daskcubes_page = True  # a plugin registered again adds no second route


def page_link(dashboard_link: str) -> str:
    """The progress page's address beside a dashboard link (``.../status``)."""
    return f"{dashboard_link.rsplit('/', 1)[0]}/{PAGE}/"
