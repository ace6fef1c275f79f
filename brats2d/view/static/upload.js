// brats2d view's upload page: send one patient's NIfTI files, poll the predict job, open the result.
import { escapeHtml } from "/static/app.js";

const $ = (id) => document.getElementById(id);
const picked = [];
function addFiles(list) {
  for (const f of list) if (!picked.some((p) => p.name === f.name)) picked.push(f);
  $("file-list").innerHTML = picked.map((f) => `<li>${escapeHtml(f.name)} <span class="empty">${(f.size / 2 ** 20).toFixed(1)} MB</span></li>`).join("");
  $("send").disabled = !picked.length;
  $("upload-error").hidden = true;
}
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
$("file-input").addEventListener("change", (e) => addFiles(e.target.files));
function uploadError(msg) {
  $("upload-error").hidden = false; $("upload-error").textContent = msg; $("progress").hidden = true;
  $("send").disabled = false; picked.length = 0; $("file-list").innerHTML = "";
}
$("send").addEventListener("click", async () => {
  const limit = (await (await fetch("/api/cases")).json()).max_upload_mb;
  const total = picked.reduce((a, f) => a + f.size, 0) / 2 ** 20;
  if (total > limit) return uploadError(`The files (${total.toFixed(0)} MB) are over this server's ${limit} MB limit (--max-upload-mb).`);
  $("send").disabled = true; $("upload-error").hidden = true;
  $("progress").hidden = false; $("stage").textContent = "uploading…"; $("bar-fill").style.width = "2%";
  const form = new FormData();
  for (const f of picked) form.append("files", f, f.name);
  let r;
  try { r = await fetch("/api/upload", { method: "POST", body: form }); }
  catch (e) { return uploadError("The upload failed (is the file over the size limit, or the server stopped?)"); }
  const j = await r.json().catch(() => ({ error: `the server answered ${r.status}` }));
  if (!r.ok) return uploadError(j.error);
  poll(j.job);
});
async function poll(id) {
  const j = await (await fetch("/api/jobs/" + id)).json();
  $("bar-fill").style.width = Math.round(100 * Math.max(j.progress, 0.02)) + "%";
  $("stage").textContent = j.stage;
  if (j.state === "error") return uploadError(j.message);
  if (j.state === "done") { picked.length = 0; $("file-list").innerHTML = ""; $("progress").hidden = true; $("send").disabled = true;
    location.hash = "#/case/" + encodeURIComponent(j.case_id); return; }
  setTimeout(() => poll(id), 700);
}

