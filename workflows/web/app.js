// SliderGAN editor page: plain JS, no build step, no external resources.
//
// Request policy for slider moves (latency goal: < 150 ms from a move to the new image):
// at most one /api/edit request is in flight per tab.  A move while one is in flight only
// marks the state dirty; when the answer arrives the *latest* slider values are sent.
// Moves in between coalesce, so the image never lags behind a queue of stale requests.
// Loading a new photo aborts any in-flight edit (AbortController) and answers are matched
// by sequence number, so a late answer for old parameters is never shown.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function makeSid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const a = new Uint8Array(16);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  // one session per tab: sessionStorage is per tab and survives a reload of that tab
  let sid = sessionStorage.getItem("slidergan-sid");
  if (!sid) { sid = makeSid(); sessionStorage.setItem("slidergan-sid", sid); }

  const S = {
    sid, info: null, p: [], pFit: [], seq: 0, shownSeq: -1,
    inflight: null, dirty: false, dirtySince: null, hasPhoto: false,
    transfer: null, lastSent: null, latencies: [], photoAbort: null,
  };
  window.sliderEditor = S;  // inspected by the browser tests

  const clip = (x) => Math.max(-1, Math.min(1, x));
  const round2 = (x) => Math.round(x * 100) / 100;  // the sliders' step

  function showMessage(text, kind) {
    const m = $("message");
    if (!text) { m.hidden = true; m.textContent = ""; return; }
    m.textContent = text;
    m.className = kind || "";
    m.hidden = false;
  }

  async function api(path, options) {
    const r = await fetch(path, options);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const msg = body && body.error ? body.error : `server answered ${r.status}`;
      const err = new Error(msg);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  // ---------------------------------------------------------------- sliders
  function buildSliders() {
    const box = $("sliders");
    box.textContent = "";
    S.info.exp_names.forEach((name, i) => {
      const row = document.createElement("div");
      row.className = "slider";
      const label = document.createElement("label");
      label.htmlFor = `slider-${i}`;
      label.textContent = name;
      label.title = name;
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min: "-1", max: "1", step: "0.01", value: "0", id: `slider-${i}` });
      input.dataset.index = String(i);
      input.disabled = true;
      const out = document.createElement("output");
      out.id = `value-${i}`;
      out.textContent = "0.00";
      input.addEventListener("input", () => {
        S.p[i] = parseFloat(input.value);
        out.textContent = S.p[i].toFixed(2);
        requestEdit();
      });
      row.append(label, input, out);
      box.append(row);
    });
    S.p = new Array(S.info.n_params).fill(0);
  }

  function setParams(p) {
    // sliders hold exactly what is sent: values are clipped to [-1, 1] and rounded to the step
    p.forEach((v, i) => {
      const x = round2(clip(Number(v) || 0));
      S.p[i] = x;
      $(`slider-${i}`).value = String(x);
      $(`value-${i}`).textContent = x.toFixed(2);
    });
    requestEdit();
  }

  function sliderValues() {
    return S.info.exp_names.map((_, i) => parseFloat($(`slider-${i}`).value));
  }

  function enableEditing(on) {
    document.querySelectorAll("#sliders input, #expression-buttons button, #neutralise, #reset, #random")
      .forEach((el) => { el.disabled = !on; });
    for (const id of ["download-crop", "download-full"]) $(id).classList.toggle("disabled", !on);
  }

  // ---------------------------------------------------------------- edits
  function requestEdit() {
    if (!S.hasPhoto) return;
    if (!S.dirty) S.dirtySince = performance.now();
    S.dirty = true;
    if (!S.inflight) sendEdit();
  }

  async function sendEdit() {
    S.dirty = false;
    const since = S.dirtySince;
    const seq = ++S.seq;
    const p = sliderValues();
    S.lastSent = { seq, p };
    const ctrl = new AbortController();
    S.inflight = ctrl;
    try {
      const r = await api("/api/edit", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sid: S.sid, seq, p }), signal: ctrl.signal,
      });
      if (!r.stale && seq > S.shownSeq) {
        await Promise.all([swapImage($("edited"), r.image), swapImage($("render"), r.render)]);
        S.shownSeq = seq;
        const ms = performance.now() - since;
        S.latencies.push(ms);
        $("latency").textContent = `update ${ms.toFixed(0)} ms (generator ${r.ms.generator} ms, ` +
          `3D render ${r.ms.render} ms, encode ${r.ms.encode} ms)`;
        refreshDownloads();
      }
    } catch (e) {
      if (e.name !== "AbortError") showMessage(e.message);
    } finally {
      if (S.inflight === ctrl) S.inflight = null;
    }
    if (S.dirty && !S.inflight && S.hasPhoto) sendEdit();
  }

  function swapImage(img, url) {
    // decode before showing, so the time measured is the time until the new pixels are ready
    const tmp = new Image();
    tmp.src = url;
    return tmp.decode().catch(() => {}).then(() => { img.src = url; });
  }

  function refreshDownloads() {
    const q = `sid=${encodeURIComponent(S.sid)}&t=${S.shownSeq}`;
    $("download-crop").href = `/api/download?${q}&kind=crop`;
    $("download-full").href = `/api/download?${q}&kind=full`;
  }

  // ---------------------------------------------------------------- photos
  async function loadPhoto(slot, { file, name }) {
    if (file && S.info && file.size > S.info.max_bytes) {
      showMessage(`${file.name}: file too large (${(file.size / 1e6).toFixed(1)} MB; limit ` +
        `${(S.info.max_bytes / 1e6).toFixed(0)} MB)`);
      return;
    }
    const fd = new FormData();
    fd.append("sid", S.sid);
    fd.append("slot", slot);
    if (file) fd.append("file", file, file.name); else fd.append("name", name);
    if (slot === "main") {
      S.dirty = false;
      if (S.inflight) S.inflight.abort();  // cancel the stale edit of the previous photo
      if (S.photoAbort) S.photoAbort.abort();
      S.photoAbort = new AbortController();
    }
    document.body.classList.add("busy");
    showMessage(`fitting ${file ? file.name : name} ...`, "info");
    try {
      const r = await api("/api/photo", { method: "POST", body: fd,
        signal: slot === "main" ? S.photoAbort.signal : undefined });
      showMessage("");
      if (slot === "main") {
        S.pFit = r.p_fit.slice();
        S.hasPhoto = true;
        $("crop").src = r.crop;
        await Promise.all([swapImage($("edited"), r.image), swapImage($("render"), r.render)]);
        S.shownSeq = S.seq;
        S.p = r.p_fit.map((v) => round2(clip(v)));
        S.p.forEach((v, i) => { $(`slider-${i}`).value = String(v); $(`value-${i}`).textContent = v.toFixed(2); });
        $("photo-status").textContent = `${r.key}: ${r.photo_size[0]}x${r.photo_size[1]}, landmarks ` +
          `${r.landmarks}, fit error ${r.fit_error == null ? "-" : r.fit_error.toFixed(3)} (${r.fit_ms} ms)`;
        enableEditing(true);
        refreshDownloads();
        // the sliders show the fit clipped to [-1, 1]: render that, so image and sliders agree
        requestEdit();
      } else {
        S.transfer = r;
        const t = $("transfer-crop");
        t.src = r.crop;
        t.hidden = false;
        $("transfer-apply").disabled = false;
        const checked = document.querySelector("input[name=transfer-source]:checked").value;
        if ((checked === "regressed" && r.p_regressed == null) || (checked === "reader" && r.p_reader == null))
          document.querySelector("input[value=fit]").checked = true;
      }
    } catch (e) {
      if (e.name !== "AbortError") showMessage(e.message);
    } finally {
      document.body.classList.remove("busy");
    }
  }

  function applyTransfer() {
    if (!S.transfer) return;
    const src = document.querySelector("input[name=transfer-source]:checked").value;
    const p = src === "regressed" && S.transfer.p_regressed ? S.transfer.p_regressed
      : src === "reader" && S.transfer.p_reader ? S.transfer.p_reader : S.transfer.p_fit;
    setParams(p);
  }

  function fillSelect(sel, photos) {
    for (const name of photos) {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = name;
      sel.append(o);
    }
    sel.disabled = photos.length === 0;
  }

  // ---------------------------------------------------------------- start
  async function init() {
    try {
      S.info = await api("/api/info");
    } catch (e) {
      showMessage(`cannot reach the editor server: ${e.message}`);
      return;
    }
    const info = S.info;
    $("model-info").textContent = `${info.variant || "checkpoint"}` + (info.step != null ? ` step ${info.step}` : "") +
      ` - ${info.n_params} parameters, ${info.image_size}x${info.image_size}`;
    buildSliders();
    // regressor for transfer: D's head | the independent reader (default when the server has one) | the 3D fit
    if (info.has_reader) {
      $("reader-choice").hidden = false;
      document.querySelector("input[value=reader]").checked = true;
    }
    const eb = $("expression-buttons");
    for (const [name, p] of Object.entries(info.expressions)) {
      const b = document.createElement("button");
      b.textContent = name;
      b.dataset.expression = name;
      b.addEventListener("click", () => setParams(p));
      eb.append(b);
    }
    fillSelect($("photo-select"), info.photos);
    fillSelect($("transfer-select"), info.photos);
    enableEditing(false);

    // each photo slot has an upload input and a select of the demo photos
    for (const [slot, fileId, selectId] of [["main", "file-input", "photo-select"],
                                            ["transfer", "transfer-file", "transfer-select"]]) {
      $(fileId).addEventListener("change", (ev) => {
        const f = ev.target.files[0];
        if (f) loadPhoto(slot, { file: f });
        ev.target.value = "";
      });
      $(selectId).addEventListener("change", (ev) => {
        if (ev.target.value) loadPhoto(slot, { name: ev.target.value });
      });
    }
    $("transfer-apply").addEventListener("click", applyTransfer);
    $("neutralise").addEventListener("click", () => setParams(S.p.map(() => 0)));
    $("reset").addEventListener("click", () => setParams(S.pFit));
    $("random").addEventListener("click", () => setParams(S.p.map(() => Math.random() * 2 - 1)));
    document.body.dataset.ready = "1";
  }

  init();
})();
