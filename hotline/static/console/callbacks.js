// Follow-up worklist: record a callback through the JSON API (POST /api/v1/callbacks/{case}/{rid}).
// Plain JS, no libraries; messages are set with textContent only.
(function () {
  "use strict";

  if (document.body.dataset.page !== "callbacks") return;

  const post = (url, body) => window.HotlineConsole.api("POST", url, body);


  function bodyOf(form) {
    const f = new FormData(form);
    if (form.dataset.kind === "answer") {
      return { outcome: "answered", resolved: f.get("resolved") === "yes",
               satisfaction: String(f.get("satisfaction") || ""), comment: String(f.get("comment") || "") };
    }
    const outcome = String(f.get("outcome") || "");
    const body = { outcome, note: String(f.get("note") || "") };
    if (outcome === "call_back_later") {
      const when = String(f.get("call_back_at") || "");
      // datetime-local is the agent's local time; the API takes a Unix timestamp.
      const ts = when ? new Date(when).getTime() / 1000 : NaN;
      if (!Number.isFinite(ts)) throw new Error("请填写回拨时间。");
      body.call_back_at = Math.round(ts);
    }
    return body;
  }

  function done(card, message) {
    card.classList.add("done");
    card.dataset.done = "1";
    for (const el of card.querySelectorAll("button, input, select, textarea")) el.disabled = true;
    card.querySelector(".result").textContent = message;
    const count = document.getElementById("callback-count");
    if (count) count.textContent = String(document.querySelectorAll("article.callback:not(.done)").length);
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    const card = form.closest && form.closest("article.callback");
    if (!card) return;
    ev.preventDefault();
    const result = card.querySelector(".result");
    result.classList.remove("error");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const url = "/api/v1/callbacks/" + encodeURIComponent(card.dataset.caseId) + "/" +
        encodeURIComponent(card.dataset.rid);
      const data = await post(url, bodyOf(form));
      if (data.result === "answered") {
        done(card, "已记录：" + (data.message || ""));
      } else if (data.state === "followup") {
        result.textContent = "已记录通话，案件仍在工作单中。";
        card.dataset.recorded = "1";
        button.disabled = false;
      } else {
        done(card, "已记录通话，本次回访结束。");
      }
    } catch (err) {
      result.textContent = err.message;
      result.classList.add("error");
      button.disabled = false;
    }
  });
  document.body.dataset.ready = "1";
})();
