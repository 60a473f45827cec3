// 督办: send a dead-lettered work order again (POST /api/v1/dispatch/dead/{id}/redrive).
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
  document.body.dataset.ready = "1";
})();
