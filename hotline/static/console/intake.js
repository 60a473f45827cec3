// 人工受理: the call-taker types the caller's complaint; the assist pane shows what the pipeline would make
// of it (POST /api/v1/console/intake/preview, nothing stored) and 登记 registers it
// (POST /api/v1/console/intake). Plain JS, no libraries; data is set with textContent only.
(function () {
  "use strict";

  if (document.body.dataset.page !== "intake") return;

  const HEADS = { category: "类别", department: "承办部门", type: "诉求类型" };
  const form = document.getElementById("intake");
  const submit = document.getElementById("in-submit");
  const result = document.getElementById("in-result");
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let asked = 0; // the newest preview request; older answers arriving late are dropped
  let key = newKey();
  // The urgency select follows the AI's level until the call-taker changes it; only a changed one is sent,
  // otherwise intake's rules decide on the words as registered.
  const URGENCY = { emergency: "紧急", urgent: "加急", normal: "一般" };
  const urgency = form.elements.urgency;
  let urgencyTouched = false;
  let aiUrgency = "";

  function newKey() {
    return (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random();
  }

  function fields() {
    const out = {};
    for (const name of ["phone", "name", "address", "text"]) out[name] = form.elements[name].value;
    out.confidential = form.elements.confidential.checked;
    return out;
  }

  function urgencyNote() {
    $("in-urgency-ai").textContent = aiUrgency
      ? "AI 建议：" + URGENCY[aiUrgency] + (urgency.value !== aiUrgency ? "（已改动）" : "") : "默认采用 AI 判断，可改动";
  }

  function showUrgency(data) {
    aiUrgency = (data.ready && data.urgency && URGENCY[data.urgency.level]) ? data.urgency.level : "";
    if (!urgencyTouched) urgency.value = aiUrgency || "normal";
    urgencyNote();
  }

  function item(parts) {
    const li = document.createElement("li");
    for (const [text, href] of parts) {
      const el = document.createElement(href ? "a" : "span");
      if (href) el.href = href;
      el.textContent = text;
      li.appendChild(el);
    }
    return li;
  }

  function fillList(boxId, rows) {
    const box = $(boxId);
    const ul = box.querySelector("ul");
    ul.textContent = "";
    for (const row of rows) ul.appendChild(row);
    box.hidden = rows.length === 0;
  }

  function show(data) {
    $("as-error").hidden = true;
    $("as-idle").hidden = !!data.ready;
    const emergency = $("as-emergency");
    emergency.hidden = !data.emergency;
    emergency.textContent = data.emergency ? "紧急情况（" + (data.urgency.reasons || []).join("、") + "）：" + data.advice : "";
    showUrgency(data);
    const heads = $("as-heads");
    heads.textContent = "";
    if (data.ready) {
      for (const head of Object.keys(HEADS)) {
        const rows = (data.heads || {})[head] || [];
        if (!rows.length) continue;
        const dt = document.createElement("dt");
        dt.textContent = HEADS[head];
        const dd = document.createElement("dd");
        dd.dataset.head = head;
        dd.textContent = rows.map((r) => r.label + "（" + Math.round(r.p * 100) + "%）").join("、");
        heads.append(dt, dd);
      }
      if (data.urgency && data.urgency.level !== "normal") {
        const dt = document.createElement("dt");
        dt.textContent = "紧急程度";
        const dd = document.createElement("dd");
        dd.textContent = data.urgency.label + (data.urgency.reasons.length ? "：" + data.urgency.reasons.join("、") : "");
        heads.append(dt, dd);
      }
    }
    heads.hidden = !heads.childElementCount;
    if (data.ready && data.phone_ok === false) {
      $("as-error").hidden = false;
      $("as-error").textContent = "来电号码格式不正确，登记前请核对。";
    }
    fillList("as-dups", (data.duplicates || []).map((d) => {
      const li = item([[d.case_id, "/console/cases/" + encodeURIComponent(d.case_id)],
        ["（" + d.status_label + "，" + d.reporter_count + " 人反映，" + d.created + "）" + d.text]]);
      li.dataset.caseId = d.case_id;
      const why = document.createElement("div");
      why.className = "hint";
      why.textContent = (d.merge ? "登记后将自动并入该案件。" : "") + "依据：" + d.reason_text;
      li.appendChild(why);
      return li;
    }));
    $("as-consultation").hidden = !data.consultation;
    fillList("as-answers", (data.answers || []).map((a) => {
      const li = item([[a.answer]]);
      li.dataset.entryId = a.entry_id;
      const meta = document.createElement("div");
      meta.className = "hint";
      meta.textContent = (a.department || "（未注明单位）") + " · " + (a.date || "（无日期）") + " · 匹配度 " +
        Math.round(a.score * 100) + "% · 原问题：" + a.question;
      li.appendChild(meta);
      return li;
    }));
    fillList("as-history", (data.history || []).map((h) => {
      const li = item([[h.id, "/console/cases/" + encodeURIComponent(h.id)],
        [" " + h.created + " · " + h.channel_label + " · " + h.status_label + " · " + h.text]]);
      li.dataset.caseId = h.id;
      return li;
    }));
  }

  async function preview() {
    const mine = ++asked;
    let data;
    try {
      data = await window.HotlineConsole.api("POST", "/api/v1/console/intake/preview", fields());
    } catch (e) {
      if (mine !== asked) return;
      $("as-error").hidden = false;
      $("as-error").textContent = e.message;
      return;
    }
    if (mine === asked) show(data);
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(preview, 400);
  }

  for (const name of ["phone", "address", "text"]) form.elements[name].addEventListener("input", schedule);
  urgency.addEventListener("change", () => { urgencyTouched = true; urgencyNote(); });

  async function register(event) {
    event.preventDefault();
    if (submit.disabled) return; // registered already, or on its way
    if (!form.elements.text.value.trim()) { window.HotlineConsole.toast("请填写诉求内容。", true); return; }
    submit.disabled = true;
    try {
      const body = fields();
      if (urgencyTouched) body.urgency = urgency.value;
      const data = await window.HotlineConsole.api("POST", "/api/v1/console/intake", body, { "Idempotency-Key": key });
      $("in-case-id").textContent = data.case_id;
      $("in-reply").textContent = data.reply;
      $("in-confirm").href = data.queue_url;
      // Only a case waiting for confirmation goes to the queue; a merged repeat or an auto-dispatched
      // case is done here.
      $("in-confirm").hidden = data.status !== "classified";
      $("in-case").href = data.case_url;
      result.hidden = false;
      for (const el of form.elements) if (el.tagName !== "BUTTON") el.readOnly = true;
      urgency.disabled = true; // a select has no readOnly
      window.HotlineConsole.toast("已登记：" + data.case_id);
    } catch (e) {
      submit.disabled = false;
      window.HotlineConsole.toast(e.message, true);
    }
  }

  form.addEventListener("submit", register);
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) register(e);
  });
  form.addEventListener("reset", () => {
    // The next call: a fresh form, a fresh idempotency key, an empty assist pane.
    key = newKey();
    asked++;
    clearTimeout(timer);
    for (const el of form.elements) el.readOnly = false;
    urgency.disabled = false;
    urgencyTouched = false;
    submit.disabled = false;
    result.hidden = true;
    setTimeout(() => { show({ ready: false }); form.elements.phone.focus(); }, 0);
  });
  if (form.elements.text.value.trim() || form.elements.phone.value.trim()) schedule();
  form.elements[form.elements.phone.value ? "text" : "phone"].focus();
  document.body.dataset.ready = "1";
})();
