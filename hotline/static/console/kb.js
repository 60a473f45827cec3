// Knowledge-base editor (/console/kb): add, edit and retire entries through the KB JSON API.
// The page itself is rendered by the server; after a change it reloads so the table shows stored data.
(function () {
  "use strict";
  if (document.body.dataset.page !== "kb") return;
  const FLASH = "hl-kb-flash";
  const form = document.getElementById("kb-form");
  const error = document.getElementById("kb-error");
  const message = document.getElementById("kb-message");
  const cancel = document.getElementById("kb-cancel");
  const title = document.getElementById("kb-form-title");
  const field = (name) => document.getElementById("kb-" + name);

  const api = window.HotlineConsole.api;


  function showError(text) {
    error.textContent = text;
    error.hidden = !text;
  }

  function done(text) {
    // Survives the reload: the message is shown on the fresh page.
    try { sessionStorage.setItem(FLASH, text); } catch (e) { /* private mode: no message, still reloads */ }
    window.location.reload();
  }

  function resetForm() {
    form.reset();
    form.dataset.entryId = "";
    form.dataset.rev = "";
    title.textContent = "新增条目";
    cancel.hidden = true;
    showError("");
  }

  function startEdit(row) {
    form.dataset.entryId = row.dataset.entryId;
    form.dataset.rev = row.dataset.rev;
    for (const name of ["question", "answer", "department", "date"]) field(name).value = row.dataset[name] || "";
    title.textContent = "修改条目 " + row.dataset.entryId;
    cancel.hidden = false;
    showError("");
    field("question").focus();
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const name of ["question", "answer", "department", "date"]) body[name] = field(name).value.trim();
    if (!body.question || !body.answer) { showError("问题和答复都不能为空。"); return; }
    const id = form.dataset.entryId;
    const save = document.getElementById("kb-save");
    save.disabled = true;
    try {
      if (id) {
        body.rev = parseInt(form.dataset.rev, 10);
        await api("PUT", "/api/v1/kb/" + encodeURIComponent(id), body);
        done("已保存条目 " + id + "。");
      } else {
        const data = await api("POST", "/api/v1/kb", body);
        done("已新增条目 " + data.entry.id + "。");
      }
    } catch (e) {
      showError(e.message);
      save.disabled = false;
    }
  });
  cancel.addEventListener("click", resetForm);

  document.getElementById("kb-rows").addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button");
    const row = btn && btn.closest("tr[data-entry-id]");
    if (!row) return;
    if (btn.classList.contains("kb-edit")) { startEdit(row); return; }
    if (btn.classList.contains("kb-retire")) {
      btn.disabled = true;
      try {
        await api("DELETE", "/api/v1/kb/" + encodeURIComponent(row.dataset.entryId), { reason: "工作台停用" });
        done("已停用条目 " + row.dataset.entryId + "，不再向市民和接线员推荐。");
      } catch (e) {
        showError(e.message);
        btn.disabled = false;
      }
    }
  });

  let flash = "";
  try { flash = sessionStorage.getItem(FLASH) || ""; sessionStorage.removeItem(FLASH); } catch (e) { flash = ""; }
  if (flash) { message.textContent = flash; message.hidden = false; }
  document.body.dataset.ready = "1";
})();
