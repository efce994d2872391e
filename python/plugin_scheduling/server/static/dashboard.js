// The dashboard: reads the API with the session cookie, updates from the SSE stream.
"use strict";
(function () {
  const H = { "X-Plugin-Scheduling": "1" };
  let me = null;
  let timer = null;

  async function api(path, opts) {
    const r = await fetch("api/v1/" + path, Object.assign({ credentials: "same-origin", headers: H }, opts || {}));
    if (r.status === 401) { location.reload(); throw new Error("signed out"); }
    if (!r.ok) { const e = new Error(path + ": " + r.status); e.status = r.status; throw e; }
    return r.json();
  }
  function cell(tr, text) { const td = document.createElement("td"); td.textContent = text == null ? "" : String(text); tr.appendChild(td); return td; }
  function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
  function fill(id, rows, render) {
    const tbody = document.querySelector("#" + id + " tbody");
    const out = document.createDocumentFragment();
    for (const row of rows) { const tr = document.createElement("tr"); render(tr, row); out.appendChild(tr); }
    tbody.replaceChildren(out);
  }
  function actions(tr, job) {
    const td = cell(tr, "");
    if (!me || job.user !== me.user) return;
    const can = { QUEUED: ["cancel"], RUNNING: ["pause", "cancel"], PAUSED: ["resume", "cancel"] }[job.state] || [];
    for (const a of can) {
      const b = document.createElement("button");
      b.textContent = a; b.dataset.action = a; b.dataset.job = job.id;
      b.addEventListener("click", async () => { b.disabled = true; try { await api("jobs/" + job.id + "/" + a, { method: "POST" }); } catch (e) { alert(e.message); } schedule(); });
      td.appendChild(b);
    }
  }
  async function refresh() {
    const [jobs, gpus, info] = await Promise.all([api("jobs"), api("gpus"), api("jobs/scheduler/info")]);
    document.getElementById("info").textContent = "policy " + info.policy + " · " + info.pending_jobs + " pending";
    const byState = (s) => jobs.filter((j) => s.includes(j.state));
    fill("queued", byState(["QUEUED"]), (tr, j) => {
      tr.id = "job-" + j.id; tr.dataset.state = j.state;
      cell(tr, j.position); cell(tr, j.id); cell(tr, j.name); cell(tr, j.user); cell(tr, j.project); cell(tr, j.priority);
      cell(tr, (j.reason.category ? "[" + j.reason.category + "] " : "") + (j.reason.message || "")); cell(tr, j.estimated_start ? when(j.estimated_start) : "unknown");
      actions(tr, j);
    });
    fill("running", byState(["RUNNING", "PAUSED"]), (tr, j) => {
      tr.id = "job-" + j.id; tr.dataset.state = j.state;
      cell(tr, j.id); cell(tr, j.name); cell(tr, j.user); cell(tr, j.project); cell(tr, j.state); cell(tr, when(j.started_at));
      const p = cell(tr, ""); const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = Math.round(j.progress * 100) + "px"; p.appendChild(bar); p.append(" " + Math.round(j.progress * 100) + "%" + (j.progress_message ? " " + j.progress_message : ""));
      actions(tr, j);
    });
    const done = byState(["COMPLETED", "FAILED", "CANCELLED"]).sort((a, b) => (b.ended_at || "").localeCompare(a.ended_at || "")).slice(0, 50);
    fill("finished", done, (tr, j) => { tr.id = "job-" + j.id; tr.dataset.state = j.state; cell(tr, j.id); cell(tr, j.name); cell(tr, j.user); cell(tr, j.project); cell(tr, j.state); cell(tr, when(j.ended_at)); cell(tr, j.error); });
    document.getElementById("no-gpus").hidden = gpus.length > 0;
    fill("gpus", gpus, (tr, g) => { cell(tr, g.index); cell(tr, g.name); cell(tr, g.capacity_mb); cell(tr, g.reserved_mb); cell(tr, g.used_mb); cell(tr, g.grants.map((x) => (x.job || "(other)") + " " + x.vram_mb + " MB").join(", ")); cell(tr, g.waiters); });
    const quotas = [];
    for (const p of me.projects) { try { quotas.push(await api("queues/quota/" + encodeURIComponent(p))); } catch (e) { if (e.status !== 404) throw e; } }
    const lim = (used, q) => used + " / " + (q == null ? "∞" : q);
    fill("quotas", quotas, (tr, q) => { cell(tr, q.project_id); cell(tr, lim(q.used_cpu, q.cpu_quota)); cell(tr, lim(q.used_memory, q.memory_quota)); cell(tr, lim(q.used_gpu, q.gpu_quota)); cell(tr, lim(q.used_vram_mb, q.vram_quota_mb)); });
    document.body.dataset.refreshed = String(Date.now());
  }
  function schedule() { if (timer) return; timer = setTimeout(() => { timer = null; refresh().catch(console.error); }, 150); }
  async function start() {
    me = await api("whoami");
    document.getElementById("who").textContent = me.user + (me.admin ? " (admin)" : "") + " · " + me.projects.join(", ");
    await refresh();
    const live = document.getElementById("live");
    const es = new EventSource("api/v1/events");
    es.onopen = () => { live.textContent = "live"; live.className = "on"; };
    es.onerror = () => { live.textContent = "reconnecting…"; live.className = "off"; };
    es.onmessage = () => schedule();
    setInterval(schedule, 15000); // estimated starts move with time
  }
  start().catch(console.error);
})();
