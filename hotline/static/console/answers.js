// 建议答复 panel of the confirmation queue: send a suggested answer to the citizen and close the case as
// 直接答复. The case fragment is replaced whenever another case is selected, so clicks are delegated.
(function () {
  "use strict";

  async function send(panel, btn) {
    const caseId = panel.dataset.caseId;
    const result = panel.querySelector("#answer-result");
    const buttons = panel.querySelectorAll("button.answer-send");
    for (const b of buttons) b.disabled = true;
    result.hidden = false;
    result.className = "answer-result";
    result.textContent = "正在发送……";
    let data;
    try {
      data = await window.HotlineConsole.api("POST", "/api/v1/cases/" + encodeURIComponent(caseId) + "/answer",
                                             { entry_id: btn.dataset.entryId });
    } catch (e) {
      result.className = "answer-result error";
      result.textContent = "发送失败：" + (e.message || "网络错误");
      for (const b of buttons) b.disabled = false;
      return;
    }
    const a = data.answer || {};
    result.className = "answer-result ok";
    result.textContent = "已发送并结案（直接答复，来源：" + (a.department || "相关部门") + (a.date ? "，" + a.date : "") + "）。"
      + (data.delivered ? "市民已收到答复。" : "该渠道无法自动送达，请电话告知市民。");
    panel.dataset.sent = data.status || "answered";
    // The live feed soon replaces this case view (the case left the queue): the toast keeps the result.
    const toast = document.getElementById("toast");
    if (toast) {
      toast.textContent = caseId + " " + result.textContent;
      toast.className = "show";
      clearTimeout(send.timer);
      send.timer = setTimeout(() => { toast.className = ""; }, 8000);
    }
    const form = document.getElementById("decide");
    if (form) form.hidden = true; // the case is closed: nothing left to confirm or dispatch
    for (const b of buttons) b.remove();
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest && ev.target.closest("button.answer-send");
    if (!btn) return;
    const panel = btn.closest("section.answers");
    if (panel && !btn.disabled) send(panel, btn);
  });
})();
