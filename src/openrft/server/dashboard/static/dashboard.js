// openrft dashboard: live curves. The page embeds its chart set-up as JSON (#chart-config); each job's
// metrics are polled from its metrics.json endpoint (?since=N returns only the lines added after the
// N-th) and the new points are appended to the uPlot charts, without reloading the page.
(function () {
  "use strict";
  var COLORS = ["#2563eb", "#ea580c", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777"];
  var DASHES = { "-": [], "--": [6, 4], ":": [2, 3] };
  var WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];

  function tick(value) { // small values (a KL of 1e-4) keep their digits instead of all reading "0"
    if (value === 0 || value === null) return value === 0 ? "0" : "";
    var size = Math.abs(value);
    return size < 1e-3 || size >= 1e5 ? value.toExponential(1) : String(Number(value.toPrecision(3)));
  }

  function seriesOf(panel, jobs) {
    var out = [];
    jobs.forEach(function (job, j) {
      panel.lines.forEach(function (line, l) {
        var label = jobs.length > 1 ? job.id + (line.label ? " " + line.label : "") : line.label || line.key;
        out.push({
          job: job.id, key: line.key, label: label, dash: DASHES[line.style] || [],
          color: COLORS[(jobs.length > 1 ? j : l) % COLORS.length],
        });
      });
    });
    return out;
  }

  function Chart(panel, figure, jobs) {
    this.figure = figure;
    this.series = seriesOf(panel, jobs);
    // "step#k" -> {step, k, values}: the k-th line a job logged at that step (a round skipped by the
    // filter, or a final evaluation, has a line of its own at the step it followed); jobs compared
    // side by side share the rows of their k-th line at each step
    this.rows = new Map();
    this.seen = new Map(); // job + "@" + step -> lines of that job at that step so far
    var width = Math.max(300, figure.clientWidth - 16);
    this.plot = new uPlot({
      width: width, height: 210,
      scales: { x: { time: false } },
      axes: [
        { label: "training step", incrs: WHOLE_STEPS },
        { label: panel.ylabel, size: 60, values: function (u, ticks) { return ticks.map(tick); } },
      ],
      series: [{ label: "step" }].concat(this.series.map(function (s) {
        return { label: s.label, stroke: s.color, dash: s.dash, spanGaps: true, width: 1.5, points: { size: 4 } };
      })),
    }, [[]].concat(this.series.map(function () { return []; })), figure.querySelector(".plot"));
  }

  Chart.prototype.add = function (job, points) {
    var self = this, changed = false;
    points.forEach(function (point) {
      var seen = job + "@" + point.step, k = self.seen.get(seen) || 0, key = point.step + "#" + k;
      self.seen.set(seen, k + 1);
      self.series.forEach(function (s, i) {
        if (s.job !== job || point[s.key] === undefined) return;
        if (!self.rows.has(key)) {
          self.rows.set(key, { step: point.step, k: k, values: self.series.map(function () { return null; }) });
        }
        self.rows.get(key).values[i] = point[s.key];
        changed = true;
      });
    });
    if (!changed) return;
    var rows = Array.from(this.rows.values()).sort(function (a, b) { return a.step - b.step || a.k - b.k; });
    var data = [rows.map(function (row) { return row.step; })].concat(this.series.map(function (_, i) {
      return rows.map(function (row) { return row.values[i]; });
    }));
    this.plot.setData(data);
    this.figure.dataset.points = String(rows.length);
    this.figure.classList.add("has-data");
  };

  function poll(job, since, charts, seconds, single) {
    fetch(job.metrics + "?since=" + since, { headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { // logged out meanwhile: to the login form, then back here
          window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
        }
        return response.ok ? response.json() : Promise.reject(response.status);
      })
      .then(function (body) {
        charts.forEach(function (chart) { chart.add(job.id, body.points); });
        if (single) {
          var state = document.getElementById("job-state"), steps = document.getElementById("job-steps");
          if (state && body.state) { state.textContent = body.state; state.className = "state state-" + body.state.toLowerCase(); }
          if (steps && body.steps !== undefined) steps.textContent = String(body.steps);
          ["progress", "reward", "age"].forEach(function (name) {
            var element = document.getElementById("job-" + name);
            if (element && body[name] !== undefined) element.textContent = body[name];
          });
          if (job.shownState === undefined) job.shownState = state ? state.dataset.state : body.state;
        }
        if (single && body.state !== job.shownState) {
          window.location.reload(); // started, ended, or resumed elsewhere: its buttons and adapter change
        } else if (body.active) {
          setTimeout(function () { poll(job, body.next, charts, seconds, single); }, seconds * 1000);
        } else if (single) { // a stopped job may be resumed from another tab, the CLI or the API
          setTimeout(function () { poll(job, body.next, charts, seconds, single); }, seconds * 5000);
        }
      })
      .catch(function () { setTimeout(function () { poll(job, since, charts, seconds, single); }, seconds * 3000); });
  }

  function start() {
    var element = document.getElementById("chart-config");
    if (!element || typeof uPlot === "undefined") return;
    var config = JSON.parse(element.textContent);
    if (!config.jobs.length) return;
    var figures = document.querySelectorAll("figure.chart");
    var charts = config.panels.map(function (panel, i) { return new Chart(panel, figures[i], config.jobs); });
    window.openrftCharts = charts;
    config.jobs.forEach(function (job) { poll(job, 0, charts, config.poll, config.jobs.length === 1); });
    window.addEventListener("resize", function () {
      charts.forEach(function (c) { c.plot.setSize({ width: Math.max(300, c.figure.clientWidth - 16), height: 210 }); });
    });
  }

  // Back to a page the browser kept in memory (a job deleted since, say): ask the server again
  window.addEventListener("pageshow", function (event) { if (event.persisted) window.location.reload(); });
  // a button's outcome (?done=...) is said once: a refresh or a later visit does not say it again
  if (window.history.replaceState && /[?&]done=/.test(location.search)) {
    var url = new URL(location.href);
    url.searchParams.delete("done");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
