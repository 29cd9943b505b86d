// The medcls page: upload one image, show it as the model reads it, its
// prediction, a probability bar per class, a warning when the image does not
// look like the training data, and (PyTorch models) its Grad-CAM++ heat map.
// No external resources.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;

async function problem(response) {
  try { return (await response.json()).detail || response.statusText; }
  catch { return `${response.status} ${response.statusText}`; }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function bar(cls, p, chosen) {
  const row = document.createElement("div");
  row.className = "bar" + (chosen ? " chosen" : "");
  row.innerHTML = '<div class="label"><span></span><span></span></div><div class="track"><div class="fill"></div></div>';
  row.querySelector(".label span:first-child").textContent = cls;
  row.querySelector(".label span:last-child").textContent = (100 * p).toFixed(1) + " %";
  row.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
  row.setAttribute("role", "meter");
  row.setAttribute("aria-label", `probability of ${cls}`);
  row.setAttribute("aria-valuemin", "0");
  row.setAttribute("aria-valuemax", "1");
  row.setAttribute("aria-valuenow", String(p));
  return row;
}

function showResult(r) {
  // The OOD flag: still show the answer, but marked untrusted, under a clear warning.
  const foreign = r.in_distribution === false;
  $("ood-warning").hidden = !foreign;
  $("ood-warning").textContent = foreign
    ? "Warning: this image does not look like the images this model was trained on (OOD score " +
      r.ood_score.toFixed(2) + (model && model.ood ? ` above the threshold ${model.ood.threshold.toFixed(2)}` : "") +
      "). The prediction below is untrusted."
    : "";
  $("result").classList.toggle("untrusted", foreign);
  $("result-class").textContent = r.class + (foreign ? " (untrusted)" : "");
  const probs = Object.entries(r.probabilities);
  const shown = model && model.positive_class ? model.positive_class : r.class;
  let text = `${r.class}: p(${shown}) = ${r.probabilities[shown].toFixed(3)}`;
  if (model && model.cutpoints) {
    // graded models decide by the expected grade between cut-points, not by the largest bar
    const grade = probs.reduce((sum, [, p], k) => sum + k * p, 0);
    text = `${r.class}: expected grade ${grade.toFixed(2)} (grades 0-${probs.length - 1}; cut-points ` +
      `${model.cutpoints.map((c) => c.toFixed(2)).join(", ")})`;
  }
  if (r.threshold !== null) text += `, threshold ${r.threshold.toFixed(3)}`;
  if (foreign) text += " (untrusted)";
  $("result-text").textContent = text;
  $("bars").replaceChildren(...probs.map(([c, p]) => bar(c, p, c === r.class)));
  let details = `model ${r.model_id} · ${r.latency_ms.toFixed(1)} ms on the server`;
  if (r.ood_score !== null && r.ood_score !== undefined) details += ` · OOD score ${r.ood_score.toFixed(2)}`;
  $("details").textContent = details;
  $("status").textContent = "";
}

async function classify(file) {
  showError("");
  if (model && file.size > model.limits.max_upload_bytes) {
    showError(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${model.limits.max_upload_bytes / 1e6} MB`);
    return;
  }
  $("output").hidden = false;
  $("filename").textContent = file.name;
  $("status").textContent = "classifying…";
  ["result-class", "result-text", "details"].forEach((id) => ($(id).textContent = ""));
  $("ood-warning").hidden = true;
  $("bars").replaceChildren();
  const form = () => { const f = new FormData(); f.append("file", file, file.name); return f; };
  $("heatmap-figure").hidden = true;
  const heatmaps = model && model.heatmaps;
  let answer, preview, heatmap;
  try {
    [answer, preview, heatmap] = await Promise.all([
      api("/v1/predict", form),
      api("/v1/preview", form),
      heatmaps ? api("/v1/heatmap", form) : null,
    ]);
  } catch (err) {
    $("output").hidden = true;
    showError(`cannot reach the server (${err.message})`);
    return;
  }
  if (!answer.ok) {
    $("output").hidden = true;
    showError(await problem(answer));
    return;
  }
  if (preview.ok) $("preview").src = URL.createObjectURL(await preview.blob());
  if (heatmap && heatmap.ok) {
    $("heatmap").src = URL.createObjectURL(await heatmap.blob());
    $("heatmap-figure").hidden = false;
  }
  showResult((await answer.json()).predictions[0]);
}

// Behind `medcls serve --api-key` the /v1/ endpoints want the key: asked for once, kept for this tab.
async function api(path, body) {
  for (let asked = false; ; asked = true) {
    const key = sessionStorage.getItem("medcls-api-key");
    const init = { method: body ? "POST" : "GET", headers: key ? { "X-API-Key": key } : {} };
    if (body) init.body = body();
    const response = await fetch(path, init);
    if (response.status !== 401 || asked) return response;
    const entered = window.prompt("This service needs an API key:");
    if (!entered) return response;
    sessionStorage.setItem("medcls-api-key", entered);
  }
}

async function loadModel() {
  const response = await api("/v1/model");
  if (!response.ok) { $("model").textContent = "model unavailable: " + (await problem(response)); return; }
  model = await response.json();
  $("model").textContent = `model ${model.model_id} (${model.arch}, ${model.image_size} px ${model.color_mode}) · ` +
    `classes: ${model.classes.join(", ")}`;
}

const drop = $("drop");
$("file").addEventListener("change", (e) => { if (e.target.files.length) classify(e.target.files[0]); });
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]); });
loadModel();
