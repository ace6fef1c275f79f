// brats2d view: patient list, three-plane viewer (NiiVue, served locally) and the upload page. Not for clinical use.
import { Niivue, SHOW_RENDER, MULTIPLANAR_TYPE, DRAG_MODE } from "/vendor/niivue.js";

const $ = (id) => document.getElementById(id);
const MODS = ["flair", "t1ce", "t1", "t2"];
// BraTS colours: necrotic/non-enhancing core red, oedema green, enhancing tumour yellow (label 4, or 3 from 2023).
const REGION_COLOURS = { 1: [230, 60, 60], 2: [60, 200, 90], 3: [250, 220, 50], 4: [250, 220, 50] };
// Drawn in this order (later on top): the heat maps under the masks, the ground-truth contour over everything.
const OVERLAYS = [
  { kind: "uncertainty", label: "Uncertainty", colour: "linear-gradient(90deg,#20f,#f0f)", opacity: 0.7, cmap: "blue2magenta" },
  { kind: "explain", label: "Explanation", colour: "linear-gradient(90deg,#300,#f30,#ff0)", opacity: 0.5, cmap: "hot" },
  { kind: "pred", label: "Prediction", colour: "#ff7a1a", opacity: 0.35 },
  { kind: "seg", label: "Ground truth (contour)", colour: "#00e5ff", opacity: 1.0 },
];
const state = { cases: [], regions: [], sort: { key: "mean", desc: false }, current: null, modality: null,
                nv: null, layers: [], frame: 0, fresh: true };

// ---------- routing
window.addEventListener("hashchange", route);
async function route() {
  const h = location.hash || "#/";
  for (const v of ["list-view", "case-view", "upload-view"]) $(v).hidden = true;
  $("nav-list").classList.toggle("active", !h.startsWith("#/upload"));
  $("nav-upload").classList.toggle("active", h.startsWith("#/upload"));
  await loadCatalog();
  if (h.startsWith("#/case/")) return showCase(decodeURIComponent(h.slice(7)));
  if (h.startsWith("#/upload")) { $("upload-view").hidden = false; return; }
  showList();
}

async function loadCatalog() {
  const r = await fetch("/api/cases");
  const j = await r.json();
  state.cases = j.cases; state.regions = j.regions;
  $("nav-upload").hidden = !j.upload;
}

// ---------- patient list
function meanDice(c) {
  const d = Object.values(c.metrics).map((m) => m.dice);
  return d.length ? d.reduce((a, b) => a + b, 0) / d.length : null;
}
function columns() {
  const cols = [{ key: "case", label: "Patient", get: (c) => c.case }];
  const multi = state.regions.length > 1;
  for (const r of state.regions) {
    cols.push({ key: `dice:${r}`, label: `Dice ${r.toUpperCase()}`, get: (c) => c.metrics[r]?.dice ?? null, dice: true });
    cols.push({ key: `hd95:${r}`, label: `HD95 ${r.toUpperCase()} (mm)`, get: (c) => c.metrics[r]?.hd95 ?? null, mm: true });
  }
  if (multi) cols.push({ key: "mean", label: "Mean Dice", get: meanDice, dice: true });
  else if (state.regions.length) cols.find((c) => c.dice).key = "mean";
  cols.push({ key: "layers", label: "Layers", get: (c) => Object.keys(c.layers).join(" "), text: true });
  return cols;
}
function diceChip(v) {
  if (v === null || v === undefined) return "<span class='empty'>&ndash;</span>";
  const hue = Math.round(Math.max(0, Math.min(1, (v - 0.5) / 0.45)) * 120); // red (<= 0.5) .. green (>= 0.95)
  return `<span class="chip" style="background:hsl(${hue},70%,55%)">${v.toFixed(3)}</span>`;
}
function sortedCases(cols) {
  const col = cols.find((c) => c.key === state.sort.key) || cols[0];
  const sign = state.sort.desc ? -1 : 1;
  return [...state.cases].sort((a, b) => {
    const x = col.get(a), y = col.get(b);
    if (x === null && y === null) return a.case.localeCompare(b.case);
    if (x === null) return 1; // patients without a score go last either way
    if (y === null) return -1;
    return sign * (typeof x === "string" ? x.localeCompare(y) : x - y);
  });
}
function showList() {
  $("list-view").hidden = false;
  const cols = columns();
  const head = $("cases").tHead, body = $("cases").tBodies[0];
  head.innerHTML = "<tr>" + cols.map((c) => `<th data-key="${c.key}" class="${c.key === state.sort.key ? "sorted" + (state.sort.desc ? " desc" : "") : ""}">${c.label}</th>`).join("") + "</tr>";
  head.querySelectorAll("th").forEach((th) => th.addEventListener("click", () => {
    const k = th.dataset.key;
    state.sort = { key: k, desc: state.sort.key === k ? !state.sort.desc : false };
    showList();
  }));
  body.innerHTML = "";
  for (const c of sortedCases(cols)) {
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    tr.innerHTML = cols.map((col) => {
      const v = col.get(c);
      if (col.dice) return `<td class="dice">${diceChip(v)}</td>`;
      if (col.mm) return `<td class="dice">${v === null ? "&ndash;" : v.toFixed(1)}</td>`;
      if (col.text) return `<td class="layers">${v}</td>`;
      return `<td>${escapeHtml(v)}${c.source === "upload" ? " <span class='empty'>(uploaded)</span>" : ""}</td>`;
    }).join("");
    tr.addEventListener("click", () => { location.hash = "#/case/" + encodeURIComponent(c.id); });
    body.appendChild(tr);
  }
  $("list-empty").hidden = state.cases.length > 0;
  $("list-empty").textContent = "No predictions here yet: run `brats2d predict ... --out PRED_DIR`, or upload a patient.";
  $("list-hint").hidden = !state.regions.length;
}
export function escapeHtml(s) { return String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`); }

// ---------- viewer
async function niivue() {
  if (state.nv) return state.nv;
  const nv = new Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, crosshairColor: [1, 0.85, 0.2, 0.5], crosshairWidth: 1,
    multiplanarShowRender: SHOW_RENDER.NEVER, multiplanarLayout: MULTIPLANAR_TYPE.GRID, dragMode: DRAG_MODE.contrast,
    isColorbar: false, textHeight: 0.035, isOrientationTextVisible: true, logLevel: "error" });
  await nv.attachToCanvas($("gl"));
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.onLocationChange = onLocation;
  state.nv = nv;
  return nv;
}

function orderedCases() { return sortedCases(columns()); }

async function showCase(id) {
  $("case-view").hidden = false;
  const c = state.cases.find((x) => x.id === id);
  $("view-error").hidden = true;
  if (!c) { $("view-error").hidden = false; $("view-error").textContent = `No patient ${id}.`; return; }
  state.current = c;
  $("case-name").textContent = c.case;
  const order = orderedCases(), i = order.findIndex((x) => x.id === id);
  $("prev").onclick = () => i > 0 && (location.hash = "#/case/" + encodeURIComponent(order[i - 1].id));
  $("next").onclick = () => i < order.length - 1 && (location.hash = "#/case/" + encodeURIComponent(order[i + 1].id));
  $("prev").disabled = i <= 0; $("next").disabled = i >= order.length - 1;
  const m = Object.entries(c.metrics);
  $("case-metrics").innerHTML = m.length ? "<span class='h'>region</span><span class='h'>Dice</span><span class='h'>HD95 mm</span>" +
    m.map(([r, v]) => `<span>${r.toUpperCase()}</span><span>${diceChip(v.dice)}</span><span>${v.hd95 === null ? "&ndash;" : v.hd95.toFixed(1)}</span>`).join("")
    : "<span class='h'>no ground truth: no metrics</span>";
  const mods = MODS.filter((k) => c.layers[k]);
  $("modality").innerHTML = mods.map((k) => `<option value="${k}">${k.toUpperCase()}</option>`).join("");
  state.modality = mods.includes(state.modality) ? state.modality : mods[0] || null;
  if (state.modality) $("modality").value = state.modality;
  state.fresh = true;
  await loadVolumes();
}

function overlayControls(c) {
  const box = $("overlays");
  box.innerHTML = "";
  for (const k of ["seg", "pred", "uncertainty", "explain"]) { // the panel lists the masks first
    const o = OVERLAYS.find((x) => x.kind === k);
    if (!c.layers[o.kind]) continue;
    const row = document.createElement("label");
    row.className = "overlay";
    row.innerHTML = `<input type="checkbox" checked data-kind="${o.kind}" id="show-${o.kind}">` +
      `<span class="swatch" style="background:${o.colour}"></span><span>${o.label}</span>` +
      `<input type="range" min="0" max="100" value="${Math.round(o.opacity * 100)}" id="alpha-${o.kind}" title="opacity">`;
    box.appendChild(row);
    row.querySelector("input[type=checkbox]").addEventListener("change", applyOpacity);
    row.querySelector("input[type=range]").addEventListener("input", applyOpacity);
  }
}

async function loadVolumes() {
  const c = state.current, nv = await niivue();
  $("loading").hidden = false;
  const keep = state.fresh ? null : [...nv.scene.crosshairPos];
  const vols = [], layers = [];
  const back = state.modality ? c.layers[state.modality] : c.layers.pred;
  vols.push({ url: back, name: fileName(back), colormap: "gray" }); layers.push("back");
  for (const o of OVERLAYS) {
    if (!c.layers[o.kind]) continue;
    vols.push({ url: c.layers[o.kind], name: fileName(c.layers[o.kind]), colormap: o.cmap || "gray", opacity: o.opacity });
    layers.push(o.kind);
  }
  if (state.fresh) overlayControls(c);
  try {
    await nv.loadVolumes(vols);
  } catch (e) {
    $("view-error").hidden = false; $("view-error").textContent = "Could not load the volumes: " + e;
    $("loading").hidden = true; return;
  }
  state.layers = layers;
  styleLayers();
  setupWindow();
  setupSliders();
  if (keep) { nv.scene.crosshairPos = keep; nv.drawScene(); nv.createOnLocationChange(); }
  else goToTumour();
  state.fresh = false;
  $("loading").hidden = true;
  document.body.dataset.loaded = c.id; // for the browser test: the volumes of this patient are on screen
}
const fileName = (url) => decodeURIComponent(url.split("/").pop());
const vol = (kind) => state.nv.volumes[state.layers.indexOf(kind)];

function labelColormap(byRegion, single) {
  const I = [0, 1, 2, 3, 4], R = [0], G = [0], B = [0], A = [0];
  for (const i of I.slice(1)) {
    const rgb = byRegion ? REGION_COLOURS[i] : single;
    R.push(rgb[0]); G.push(rgb[1]); B.push(rgb[2]); A.push(255);
  }
  return { R, G, B, A, I, labels: ["", "core", "oedema", "enhancing", "enhancing"] };
}

function styleLayers() {
  const byRegion = $("by-region").checked;
  const seg = vol("seg"), pred = vol("pred");
  if (seg) { outlineOnce(seg); seg.setColormapLabel(labelColormap(byRegion, [0, 229, 255])); }
  // A one-region model writes 1 for "tumour": colour it as a whole, never as "core".
  if (pred) pred.setColormapLabel(labelColormap(byRegion && state.regions.length > 1, [255, 122, 26]));
  for (const k of ["uncertainty", "explain"]) {
    const v = vol(k);
    if (!v) continue;
    // Below cal_min is transparent: confident voxels, or weak evidence; the colours span the upper range.
    const hi = v.global_max > 0 ? v.global_max : 1;
    v.colormapType = 1; // ZERO_TO_MAX_TRANSPARENT_BELOW_MIN
    v.cal_min = (k === "explain" ? 0.12 : 0.3) * hi;
    v.cal_max = (k === "explain" ? 0.8 : 1.0) * hi;
  }
  frames();
  applyOpacity();
  legend(byRegion);
}

function outlineOnce(v) {
  // Ground truth as a contour: keep the label voxels that touch a different label (6-neighbourhood, in 3D).
  if (v._outlined) return;
  const [nx, ny, nz] = [v.hdr.dims[1], v.hdr.dims[2], v.hdr.dims[3]];
  const src = v.img, out = new src.constructor(src.length), sxy = nx * ny;
  for (let z = 0; z < nz; z++) for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) {
    const i = x + y * nx + z * sxy, l = src[i];
    if (!l) continue;
    if (x === 0 || y === 0 || z === 0 || x === nx - 1 || y === ny - 1 || z === nz - 1 ||
        src[i - 1] !== l || src[i + 1] !== l || src[i - nx] !== l || src[i + nx] !== l || src[i - sxy] !== l || src[i + sxy] !== l) out[i] = l;
  }
  v.tumourImg = src; // the filled labels, for "slice with most tumour"
  v.img = out; v._outlined = true;
}

function frames() {
  const multi = ["uncertainty", "explain"].map(vol).filter((v) => v && v.nFrame4D > 1);
  $("frame-row").hidden = !multi.length;
  if (!multi.length) return;
  const regions = state.regions.length > 1 ? state.regions : ["wt", "tc", "et"];
  $("frame").innerHTML = regions.map((r, i) => `<option value="${i}">${r.toUpperCase()}</option>`).join("");
  $("frame").value = String(state.frame);
  for (const v of multi) state.nv.setFrame4D(v.id, state.frame);
}

function applyOpacity() {
  const nv = state.nv;
  for (const o of OVERLAYS) {
    const i = state.layers.indexOf(o.kind);
    if (i < 0 || !$("show-" + o.kind)) continue;
    nv.setOpacity(i, $("show-" + o.kind).checked ? $("alpha-" + o.kind).value / 100 : 0);
  }
  nv.updateGLVolume();
}

function legend(byRegion) {
  const sw = (rgb, t) => `<span><i class="swatch" style="background:rgb(${rgb})"></i>${t}</span>`;
  $("legend").innerHTML = byRegion ? sw(REGION_COLOURS[1], "core") + sw(REGION_COLOURS[2], "oedema") + sw(REGION_COLOURS[4], "enhancing")
    : sw([0, 229, 255], "ground truth") + sw([255, 122, 26], "prediction");
}

// ---------- window / level and slices
function setupWindow() {
  const v = state.nv.volumes[0], lo = v.global_min, hi = v.global_max;
  for (const [id, val] of [["win-min", v.cal_min], ["win-max", v.cal_max]]) {
    const el = $(id);
    el.min = lo; el.max = hi; el.step = (hi - lo) / 500 || 1; el.value = val;
  }
}
function onWindow() {
  const v = state.nv.volumes[0];
  v.cal_min = Math.min(+$("win-min").value, +$("win-max").value - 1e-6);
  v.cal_max = +$("win-max").value;
  state.nv.updateGLVolume();
}
function setupSliders() {
  const d = state.nv.volumes[0].dimsRAS;
  for (const a of [0, 1, 2]) { $("slice-" + a).min = 0; $("slice-" + a).max = d[a + 1] - 1; }
}
function onSlider(axis) {
  const nv = state.nv, vox = nv.frac2vox(nv.scene.crosshairPos);
  vox[axis] = +$("slice-" + axis).value;
  nv.scene.crosshairPos = nv.vox2frac(vox);
  nv.drawScene(); nv.createOnLocationChange();
}
function onLocation(d) {
  for (const a of [0, 1, 2]) { $("slice-" + a).value = d.vox[a]; $(`slice-${a}-v`).textContent = d.vox[a]; }
  const names = ["scan", ...state.layers.slice(1).map((k) => (k === "seg" ? "gt contour" : k))];
  $("location").textContent = `voxel ${d.vox.join(", ")}\n` + d.values.map((v, i) =>
    `${(names[i] === "scan" ? (state.modality || "scan") : names[i]).padEnd(12)}${fmt(v.value)}`).join("\n");
}
const fmt = (x) => (x === undefined || x === null || Number.isNaN(x) ? "–" : Number.isInteger(x) ? String(x) : x.toPrecision(3));

function goToTumour() {
  // The axial slice with most tumour (ground truth if there is one, else the prediction), at the tumour's centre there.
  const nv = state.nv, seg = vol("seg"), v = seg || vol("pred");
  if (!v) return;
  const img = seg ? seg.tumourImg : v.img, [nx, ny, nz] = [v.hdr.dims[1], v.hdr.dims[2], v.hdr.dims[3]];
  let best = -1, bz = Math.floor(nz / 2);
  for (let z = 0; z < nz; z++) {
    let n = 0;
    for (let i = z * nx * ny, e = i + nx * ny; i < e; i++) if (img[i]) n++;
    if (n > best) { best = n; bz = z; }
  }
  let sx = 0, sy = 0, n = 0;
  for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) if (img[x + y * nx + bz * nx * ny]) { sx += x; sy += y; n++; }
  const [cx, cy] = n ? [sx / n, sy / n] : [nx / 2, ny / 2];
  const A = v.hdr.affine, p = [cx, cy, bz, 1];
  const mm = [0, 1, 2].map((r) => A[r][0] * p[0] + A[r][1] * p[1] + A[r][2] * p[2] + A[r][3]);
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.drawScene(); nv.createOnLocationChange();
}

// ---------- keyboard, controls
document.addEventListener("keydown", (e) => {
  if ($("case-view").hidden || !state.nv || ["SELECT", "INPUT"].includes(e.target.tagName)) return;
  if (e.key === "ArrowUp" || e.key === "ArrowDown") { state.nv.moveCrosshairInVox(0, 0, e.key === "ArrowUp" ? 1 : -1); e.preventDefault(); }
  else if (e.key === "n") $("next").click();
  else if (e.key === "p") $("prev").click();
});
$("modality").addEventListener("change", () => { state.modality = $("modality").value; loadVolumes(); });
$("win-min").addEventListener("input", onWindow);
$("win-max").addEventListener("input", onWindow);
for (const a of [0, 1, 2]) $("slice-" + a).addEventListener("input", () => onSlider(a));
$("to-tumour").addEventListener("click", goToTumour);
$("by-region").addEventListener("change", () => { styleLayers(); state.nv.updateGLVolume(); });
$("frame").addEventListener("change", () => { state.frame = +$("frame").value; frames(); state.nv.updateGLVolume(); });

window.viewerState = state; // for debugging and the browser test
route();
