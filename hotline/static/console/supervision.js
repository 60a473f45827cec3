// 督办: send a dead-lettered work order again (POST /api/v1/dispatch/dead/{id}/redrive); approve or refuse
// a unit's extension request (POST /api/v1/dispatch/extensions/{case}/approve | refuse).
// Plain JS, no libraries; messages are set with textContent only.
(function () {
  "use strict";

  if (document.body.dataset.page !== "supervision") return;

  const toast = (message, isError) => window.HotlineConsole.toast(message, isError);

  for (const btn of document.querySelectorAll("button.redrive")) {
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      try {
        const res = await window.HotlineConsole.api(
          "POST", "/api/v1/dispatch/dead/" + encodeURIComponent(btn.dataset.deadId) + "/redrive");
        const row = btn.closest("tr");
        row.classList.add("done");
        btn.replaceWith(document.createTextNode("已重新投递"));
        const count = document.getElementById("dead-count");
        count.textContent = String(Math.max(0, Number(count.textContent) - 1));
        toast("工单 " + res.order_id + " 已重新投递。");
      } catch (e) {
        btn.disabled = false;
        toast(e.message, true);
      }
    });
  }
  // 延期申请: the row carries the request it shows, so a newer request from the unit is not decided unseen.
  async function decideExtension(btn, approve) {
    const row = btn.closest("tr");
    const caseId = row.dataset.caseId;
    const note = row.querySelector("input.ext-note");
    const body = { request_id: row.dataset.requestId, note: note.value.trim() };
    if (approve) {
      const hours = Number(row.querySelector("input.ext-hours").value);
      if (!(hours > 0)) { toast("请填写批准的小时数。", true); return; }
      body.hours = hours;
    } else if (!body.note) {
      toast("不同意延期须在备注中填写理由。", true);
      note.focus();
      return;
    }
    const buttons = row.querySelectorAll("td.ext-decide button");
    for (const b of buttons) b.disabled = true;
    try {
      const res = await window.HotlineConsole.api(
        "POST", "/api/v1/dispatch/extensions/" + encodeURIComponent(caseId) + (approve ? "/approve" : "/refuse"), body);
      row.classList.add("done");
      const cell = row.querySelector("td.ext-decide");
      cell.textContent = approve ? "已同意，办理期限延至 " + res.deadline_text : "已不同意，期限不变";
      for (const id of ["extension-count", "extension-total"]) {
        const count = document.getElementById(id);
        if (count) count.textContent = String(Math.max(0, Number(count.textContent) - 1));
      }
      toast(approve ? "案件 " + caseId + " 延期 " + res.hours + " 小时，已告知市民。" : "已不同意案件 " + caseId + " 的延期申请。");
    } catch (e) {
      for (const b of buttons) b.disabled = false;
      toast(e.message, true);
    }
  }
  for (const btn of document.querySelectorAll("button.ext-approve")) {
    btn.addEventListener("click", () => decideExtension(btn, true));
  }
  for (const btn of document.querySelectorAll("button.ext-refuse")) {
    btn.addEventListener("click", () => decideExtension(btn, false));
  }
  document.body.dataset.ready = "1";
})();
