// The operator's console: one Alpine.js component over the JSON API and the live stream.
// Server data is only ever rendered with x-text / attribute bindings (text, never HTML).
"use strict";

const KEY_STORAGE = "taskq.api-key";
const WINDOW_SECONDS = 300; // the charts show the last five minutes
const TIMING_BUCKET = 10; // percentiles per 10 s
const PRIORITIES = ["critical", "high", "normal", "low"];
const STATUSES = ["blocked", "scheduled", "pending", "running", "retrying", "completed", "failed", "cancelled"];

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.floor(q * sorted.length));
  return sorted[i];
}

// Per-second counts and per-bucket timing samples, kept for the chart window only.
class LiveSeries {
  constructor() {
    this.perSecond = new Map(); // second -> {completed, failed}
    this.timings = new Map(); // bucket start -> {wait: [], run: []}
    this.readyAt = new Map(); // job_id -> ms it became pending
    this.startedAt = new Map(); // job_id -> ms it started running
  }

  add(event) {
    const at = Date.parse(event.at);
    if (Number.isNaN(at)) return;
    const id = event.job_id;
    const second = Math.floor(Date.now() / 1000);
    if (event.status === "pending") this.readyAt.set(id, at);
    if (event.status === "running") {
      if (this.readyAt.has(id)) this.sample("wait", (at - this.readyAt.get(id)) / 1000);
      this.readyAt.delete(id);
      this.startedAt.set(id, at);
    }
    if (["completed", "failed", "retrying", "cancelled"].includes(event.status)) {
      if (event.previous_status === "running" && this.startedAt.has(id)) {
        this.sample("run", (at - this.startedAt.get(id)) / 1000);
      }
      this.startedAt.delete(id);
    }
    if (event.status === "completed" || event.status === "failed") {
      const row = this.perSecond.get(second) || { completed: 0, failed: 0 };
      row[event.status] += 1;
      this.perSecond.set(second, row);
    }
  }

  sample(kind, seconds) {
    const bucket = Math.floor(Date.now() / 1000 / TIMING_BUCKET) * TIMING_BUCKET;
    const row = this.timings.get(bucket) || { wait: [], run: [] };
    row[kind].push(Math.max(seconds, 0));
    this.timings.set(bucket, row);
  }

  prune() {
    const oldest = Math.floor(Date.now() / 1000) - WINDOW_SECONDS;
    for (const k of this.perSecond.keys()) if (k < oldest) this.perSecond.delete(k);
    for (const k of this.timings.keys()) if (k < oldest) this.timings.delete(k);
    const limitMs = Date.now() - 3600 * 1000;
    for (const map of [this.readyAt, this.startedAt]) {
      if (map.size < 20000) continue;
      for (const [k, v] of map) if (v < limitMs) map.delete(k);
    }
  }

  rateData() {
    const now = Math.floor(Date.now() / 1000);
    const xs = [], done = [], failed = [];
    for (let t = now - WINDOW_SECONDS; t <= now; t++) {
      const row = this.perSecond.get(t);
      xs.push(t);
      done.push(row ? row.completed : 0);
      failed.push(row ? row.failed : 0);
    }
    return [xs, done, failed];
  }

  timingData() {
    const now = Math.floor(Date.now() / 1000 / TIMING_BUCKET) * TIMING_BUCKET;
    const xs = [], w50 = [], w95 = [], r50 = [], r95 = [];
    for (let t = now - WINDOW_SECONDS; t <= now; t += TIMING_BUCKET) {
      const row = this.timings.get(t) || { wait: [], run: [] };
      const wait = [...row.wait].sort((a, b) => a - b);
      const run = [...row.run].sort((a, b) => a - b);
      xs.push(t);
      w50.push(percentile(wait, 0.5));
      w95.push(percentile(wait, 0.95));
      r50.push(percentile(run, 0.5));
      r95.push(percentile(run, 0.95));
    }
    return [xs, w50, w95, r50, r95];
  }

  totals() {
    let completed = 0, failed = 0;
    for (const row of this.perSecond.values()) {
      completed += row.completed;
      failed += row.failed;
    }
    return { completed, failed };
  }
}

function chart(element, series, data) {
  const width = Math.max(element.clientWidth || 0, 320);
  return new uPlot(
    {
      width,
      height: 200,
      series: [{}, ...series],
      axes: [{ stroke: "#222" }, { stroke: "#222" }],
      legend: { live: false },
      cursor: { show: false },
    },
    data,
    element,
  );
}

document.addEventListener("alpine:init", () => {
  Alpine.data("taskqConsole", () => ({
    key: sessionStorage.getItem(KEY_STORAGE) || "",
    keyInput: "",
    keyError: "",
    notice: "",
    view: "dashboard",
    jobId: "",
    priorities: PRIORITIES,
    statuses: STATUSES,
    overview: null,
    jobs: [],
    jobsCursor: null,
    filters: { status: "", priority: "", type: "" },
    search: "",
    job: null,
    logs: [],
    attempts: [],
    jobDeadLetter: null,
    workers: [],
    deadLetters: [],
    streamState: "closed",
    liveTotals: { completed: 0, failed: 0 },
    _series: new LiveSeries(),
    _charts: null,
    _socket: null,
    _timers: [],
    _jobsReload: null,

    init() {
      window.addEventListener("hashchange", () => this.route());
      if (this.key) this.start();
    },

    // --- the key -------------------------------------------------------------------
    saveKey() {
      this.key = this.keyInput.trim();
      this.keyInput = "";
      this.keyError = "";
      sessionStorage.setItem(KEY_STORAGE, this.key);
      this.start();
    },

    forgetKey(message = "") {
      sessionStorage.removeItem(KEY_STORAGE);
      this.key = "";
      this.keyError = message;
      this.stop();
    },

    start() {
      this.route();
      this.connect();
      this._timers.push(setInterval(() => this.tick(), 1000));
      this._timers.push(setInterval(() => this.refresh(), 5000));
    },

    stop() {
      this._timers.forEach(clearInterval);
      this._timers = [];
      if (this._socket) this._socket.close();
      this._socket = null;
    },

    // --- HTTP ----------------------------------------------------------------------
    async api(method, path, body) {
      const headers = { Authorization: "Bearer " + this.key, Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
      });
      if (response.status === 401) {
        this.forgetKey("The API refused this key.");
        throw new Error("unauthorized");
      }
      if (!response.ok) {
        let message = response.status + " " + response.statusText;
        try {
          const error = (await response.json()).error;
          if (error && error.message) message = error.message;
        } catch (_) { /* not JSON */ }
        throw new Error(message);
      }
      return response.status === 204 ? null : response.json();
    },

    async attempt(work) {
      try {
        await work();
        this.notice = "";
      } catch (error) {
        if (error.message !== "unauthorized") this.notice = String(error.message);
      }
    },

    post(path) {
      return this.attempt(async () => {
        await this.api("POST", path);
        await this.refresh();
      });
    },

    // --- views ---------------------------------------------------------------------
    route() {
      const parts = location.hash.replace(/^#\/?/, "").split("/");
      const name = parts[0] || "dashboard";
      if (name === "jobs" && parts.length > 1 && parts[1]) {
        this.view = "job";
        this.jobId = decodeURIComponent(parts.slice(1).join("/"));
        this.job = null;
      } else {
        this.view = { jobs: "jobs", workers: "workers", "dead-letters": "dead" }[name] || "dashboard";
      }
      this.refresh();
    },

    refresh() {
      if (!this.key) return Promise.resolve();
      const loaders = {
        dashboard: () => this.loadOverview(),
        jobs: () => this.loadJobs(),
        job: () => this.loadJob(),
        workers: () => this.loadWorkers(),
        dead: () => this.loadDeadLetters(),
      };
      return this.attempt(loaders[this.view]);
    },

    async loadOverview() {
      this.overview = await this.api("GET", "/stats/overview");
      this.$nextTick(() => this.drawCharts());
    },

    async loadJobs(more = false) {
      const query = new URLSearchParams({ limit: "50" });
      for (const [k, v] of Object.entries(this.filters)) if (v) query.set(k, v.trim());
      if (more && this.jobsCursor) query.set("cursor", this.jobsCursor);
      const page = await this.api("GET", "/jobs?" + query.toString());
      this.jobs = more ? [...this.jobs, ...page.items] : page.items;
      this.jobsCursor = page.next_cursor;
    },

    async loadJob() {
      const id = encodeURIComponent(this.jobId);
      const [job, logs] = await Promise.all([
        this.api("GET", "/jobs/" + id),
        this.api("GET", "/jobs/" + id + "/logs"),
      ]);
      this.job = job;
      this.logs = logs.items;
      this.attempts = this.attemptsOf(logs.items);
      this.jobDeadLetter = null;
      if (job.status === "failed") {
        const letters = await this.api("GET", "/dead-letters?limit=500");
        this.jobDeadLetter = letters.items.find((d) => d.job_id === job.job_id) || null;
      }
    },

    async loadWorkers() {
      this.workers = (await this.api("GET", "/workers")).items;
    },

    async loadDeadLetters() {
      this.deadLetters = (await this.api("GET", "/dead-letters?limit=100")).items;
    },

    attemptsOf(items) {
      const byAttempt = new Map();
      for (const line of items) {
        if (!line.attempt) continue;
        const a = byAttempt.get(line.attempt) || { attempt: line.attempt, outcome: "", error: "", traceback: "" };
        const data = line.data || {};
        if (line.event === "transition" || line.event === "status_changed" || data.result) {
          if (data.result) a.outcome = String(data.result);
        }
        if (data.error) a.error = String(data.error);
        if (data.traceback) a.traceback = String(data.traceback);
        byAttempt.set(line.attempt, a);
      }
      return [...byAttempt.values()].sort((x, y) => x.attempt - y.attempt);
    },

    openSearch() {
      const id = this.search.trim();
      if (id) location.hash = this.jobHref(id);
    },

    cancelJob() {
      return this.attempt(async () => {
        await this.api("PATCH", "/jobs/" + encodeURIComponent(this.jobId) + "/cancel");
        await this.loadJob();
      });
    },

    replay(letter) {
      return this.attempt(async () => {
        await this.api("POST", "/dead-letters/" + letter.id + "/replay");
        await this.refresh();
      });
    },

    discard(letter) {
      return this.attempt(async () => {
        await this.api("DELETE", "/dead-letters/" + letter.id);
        await this.refresh();
      });
    },

    // --- the live stream -----------------------------------------------------------
    connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(scheme + location.host + "/jobs/stream");
      this._socket = socket;
      this.streamState = "connecting";
      socket.addEventListener("open", () => socket.send(JSON.stringify({ token: this.key })));
      socket.addEventListener("message", (message) => {
        let event;
        try { event = JSON.parse(message.data); } catch (_) { return; }
        if (event.event === "subscribed") {
          this.streamState = "live";
          return;
        }
        this.onEvent(event);
      });
      socket.addEventListener("close", (closed) => {
        if (this._socket !== socket) return;
        // 1008 (policy violation): the api refused the key; asking again beats retrying.
        if (closed.code === 1008) { this.forgetKey("The stream refused this key."); return; }
        this.streamState = "reconnecting";
        setTimeout(() => { if (this.key && this._socket === socket) this.connect(); }, 2000);
      });
    },

    onEvent(event) {
      if (!event.job_id) return;
      this._series.add(event);
      if (this.view === "jobs") {
        const row = this.jobs.find((j) => j.job_id === event.job_id);
        if (row && event.status) {
          row.status = event.status;
          if (event.attempt) row.attempts = event.attempt;
        } else if (!row) {
          this.reloadJobsSoon();
        }
      } else if (this.view === "job" && event.job_id === this.jobId) {
        this.attempt(() => this.loadJob());
      } else if (this.view === "dead" && event.status === "failed") {
        this.attempt(() => this.loadDeadLetters());
      } else if (this.view === "dashboard" && event.status) {
        this.reloadOverviewSoon(); // a start or an end moves the token pool: show it live
      }
    },

    reloadOverviewSoon() {
      if (this._overviewReload) return;
      this._overviewReload = setTimeout(() => {
        this._overviewReload = null;
        this.attempt(() => this.loadOverview());
      }, 250);
    },

    reloadJobsSoon() {
      if (this._jobsReload) return;
      this._jobsReload = setTimeout(() => {
        this._jobsReload = null;
        this.attempt(() => this.loadJobs());
      }, 300);
    },

    // --- charts --------------------------------------------------------------------
    tick() {
      this._series.prune();
      this.liveTotals = this._series.totals();
      if (this.view === "dashboard") this.drawCharts();
    },

    drawCharts() {
      const rate = document.getElementById("rate-chart");
      const timing = document.getElementById("timing-chart");
      if (!rate || !timing || typeof uPlot === "undefined" || rate.offsetParent === null) return;
      if (!this._charts) {
        this._charts = {
          rate: chart(rate, [
            { label: "completed/s", stroke: "#1a7f37", width: 2 },
            { label: "failed/s", stroke: "#b42318", width: 2 },
          ], this._series.rateData()),
          timing: chart(timing, [
            { label: "wait p50", stroke: "#175cd3", width: 2 },
            { label: "wait p95", stroke: "#175cd3", dash: [4, 4] },
            { label: "run p50", stroke: "#6e4c00", width: 2 },
            { label: "run p95", stroke: "#6e4c00", dash: [4, 4] },
          ], this._series.timingData()),
        };
        return;
      }
      this._charts.rate.setData(this._series.rateData());
      this._charts.timing.setData(this._series.timingData());
    },

    // --- formatting ----------------------------------------------------------------
    jobHref(id) {
      return "#/jobs/" + encodeURIComponent(id);
    },

    when(value) {
      if (!value) return "";
      const date = new Date(value);
      return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
    },

    cancellable(job) {
      return ["blocked", "scheduled", "pending", "retrying", "running"].includes(job.status);
    },

    progressValue(job) {
      const p = job.progress;
      if (p === null || p === undefined) return 0;
      return typeof p === "number" ? p : Number(p.fraction || 0);
    },

    progressText(job) {
      const p = job.progress;
      if (p === null || p === undefined) return "";
      if (typeof p === "number") return Math.round(p * 100) + "%";
      return Math.round(Number(p.fraction || 0) * 100) + "%" + (p.message ? " " + p.message : "");
    },
  }));
});
