// Staff console: live confirmation queue with a keyboard flow. Plain JS, no libraries.
// Server fragments (/console/queue/list, /console/queue/case/ID) are rendered by jinja2 with
// autoescaping; everything this script builds itself from data uses textContent, never innerHTML.
(function () {
  "use strict";

  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const page = document.body.dataset.page;

  function toLogin() {
    window.location.assign("/console/login?expired=1&next=" + encodeURIComponent(location.pathname));
  }

  async function api(method, url, body, headers) {
    const opts = { method, headers: Object.assign({ "X-CSRF-Token": csrf, Accept: "application/json" }, headers || {}),
                   credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(url, opts);
    if (resp.status === 401) { toLogin(); throw new Error("登录已过期"); }
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {}; }
    if (!resp.ok) throw new Error((data.error && data.error.message) || ("请求失败（" + resp.status + "）"));
    return data;
  }
  // The page scripts (worklist, KB editor, answers panel) call the staff API through this one helper.
  window.HotlineConsole = { api: api, toast: toast };

  async function fragment(url) {
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/x-fragment" } });
    if (resp.status === 401) { toLogin(); throw new Error("登录已过期"); }
    const text = await resp.text();
    if (!resp.ok) throw Object.assign(new Error("加载失败（" + resp.status + "）"), { status: resp.status });
    return text;
  }

  function toast(message, isError) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = message;
    el.className = isError ? "show error" : "show";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.className = ""; }, 4000);
  }

  const URGENCY_LABELS = { emergency: "紧急", urgent: "加急", normal: "一般" };

  function typing(target) {
    return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT");
  }

  // --- the category tree, departments and types, searched here in the browser -----------------
  let catalog = null;
  async function loadCatalog() {
    if (!catalog) catalog = await api("GET", "/api/v1/console/catalog");
    return catalog;
  }

  function searchCatalog(source, query, limit) {
    const q = query.trim();
    const out = [];
    if (!catalog) return out;
    if (source === "categories") {
      for (const node of catalog.categories) {
        const text = node.path.join(" / ");
        if (!q || text.includes(q)) out.push({ label: node.label, path: node.path, text });
        if (out.length >= limit) break;
      }
    } else {
      for (const name of catalog[source] || []) {
        if (!q || name.includes(q)) out.push({ label: name, path: [name], text: name });
        if (out.length >= limit) break;
      }
    }
    // Free text is allowed only when there is no list to choose from.
    if (q && !out.length && !(catalog[source] || []).length) out.push({ label: q, path: [q], text: q + "（手动输入）" });
    return out;
  }

  // --- the queue page ------------------------------------------------------------------------------
  function initQueue() {
    const list = document.getElementById("queue-list");
    const detail = document.getElementById("detail");
    const count = document.getElementById("queue-count");
    let selected = null;
    let state = null; // the decision being made on the selected case
    let dirty = false;
    let listTimer = null;

    function items() { return Array.from(list.querySelectorAll("li.item")); }

    function markSelected() {
      for (const li of items()) {
        const on = li.dataset.caseId === selected;
        li.classList.toggle("selected", on);
        // aria-current, not aria-selected: a plain list item has no selected state for screen readers.
        if (on) li.setAttribute("aria-current", "true"); else li.removeAttribute("aria-current");
        if (on) li.scrollIntoView({ block: "nearest" });
      }
    }

    async function refreshList() {
      let html;
      try { html = await fragment("/console/queue/list"); } catch (e) { return; }
      const before = items().map((li) => li.dataset.caseId);
      const index = Math.max(0, before.indexOf(selected));
      list.innerHTML = html;
      const now = items();
      count.textContent = String(now.length);
      for (const li of now) if (!before.includes(li.dataset.caseId)) li.classList.add("new");
      if (!now.some((li) => li.dataset.caseId === selected)) {
        const next = now[Math.min(index, now.length - 1)];
        await select(next ? next.dataset.caseId : null);
      } else {
        markSelected();
      }
    }

    function scheduleList() {
      clearTimeout(listTimer);
      listTimer = setTimeout(refreshList, 150);
    }

    async function select(caseId) {
      selected = caseId;
      dirty = false;
      markSelected();
      if (!caseId) {
        detail.textContent = "";
        const p = document.createElement("p");
        p.className = "hint";
        p.textContent = "队列已清空。";
        detail.appendChild(p);
        state = null;
        return;
      }
      let html;
      try { html = await fragment("/console/queue/case/" + encodeURIComponent(caseId)); } catch (e) {
        if (selected === caseId) { detail.textContent = e.message; }
        return;
      }
      if (selected !== caseId) return; // the call-taker moved on while it loaded
      detail.innerHTML = html;
      initDetail();
    }

    function initDetail() {
      const art = detail.querySelector("article.case-detail");
      if (!art) { state = null; return; }
      const path = art.dataset.categoryPath ? art.dataset.categoryPath.split("/") : [];
      state = {
        caseId: art.dataset.caseId,
        category: art.dataset.category,
        category_path: path.length && path[0] === art.dataset.category ? path : (art.dataset.category ? [art.dataset.category] : []),
        department: art.dataset.department,
        type: art.dataset.type,
        co_departments: [],
        // Pre-selected: the call-taker's urgency from 人工受理 if any, else the AI's (intake's rules).
        urgency: art.dataset.urgency || art.dataset.urgencyAi || "normal",
        urgencyAi: art.dataset.urgencyAi || "normal",
        // Until the call-taker picks a level, the pre-selection stands: the server keeps the urgency's source
        // (a call-taker's 加急 gives the urgent time limit, a utility outage the rules found the utilities one).
        urgencyPicked: false,
      };
      render();
      for (const input of detail.querySelectorAll("input.picker")) setupPicker(input);
      for (const btn of detail.querySelectorAll("button.opt")) {
        btn.addEventListener("click", () => pickOption(btn.dataset.head, btn.dataset.label));
      }
      for (const btn of detail.querySelectorAll("button.merge")) btn.addEventListener("click", () => mergeInto(btn.dataset.into));
      for (const btn of detail.querySelectorAll("button.reject")) btn.addEventListener("click", () => rejectDup(btn.dataset.candidate));
      const form = detail.querySelector("#decide");
      if (form) {
        form.addEventListener("submit", (ev) => { ev.preventDefault(); confirmCase(); });
        form.addEventListener("input", () => { dirty = true; });
      }
    }

    function render() {
      if (!state) return;
      const show = (id, text) => { const el = detail.querySelector(id); if (el) el.textContent = text; };
      show("#chosen-category", state.category ? "已选：" + (state.category_path.length ? state.category_path.join(" / ") : state.category) : "未选");
      show("#chosen-department", state.department ? "已选：" + state.department : "未选");
      show("#chosen-type", state.type ? "已选：" + state.type : "未选");
      show("#chosen-co", state.co_departments.length ? "已选：" + state.co_departments.join("、") : "无");
      show("#chosen-urgency", "已选：" + (URGENCY_LABELS[state.urgency] || state.urgency) +
        (state.urgency !== state.urgencyAi ? "（AI 建议：" + (URGENCY_LABELS[state.urgencyAi] || state.urgencyAi) + "）" : ""));
      for (const btn of detail.querySelectorAll("button.opt")) {
        const on = state[btn.dataset.head] === btn.dataset.label;
        btn.classList.toggle("on", on);
        if (btn.dataset.head === "urgency") btn.setAttribute("aria-pressed", on ? "true" : "false");
      }
    }

    function pickOption(head, label, path) {
      if (!state) return;
      dirty = true;
      if (head === "co_departments") {
        if (label && label !== state.department && !state.co_departments.includes(label)) state.co_departments.push(label);
      } else if (head === "category") {
        state.category = path && path.length ? path[0] : label;
        state.category_path = path && path.length ? path : [label];
        if (catalog && catalog.default_department && !detail.querySelector('button.opt[data-head="department"]')) {
          state.department = catalog.default_department[state.category] || state.department;
        }
      } else {
        state[head] = label;
        if (head === "urgency") state.urgencyPicked = true;
      }
      render();
    }

    // u: 一般 → 加急 → 紧急 → 一般.
    function cycleUrgency() {
      if (!state || !detail.querySelector('button.opt[data-head="urgency"]')) return;
      const order = ["normal", "urgent", "emergency"];
      pickOption("urgency", order[(order.indexOf(state.urgency) + 1) % order.length]);
    }

    function pickByKey(key) {
      const btn = detail.querySelector('button.opt[data-key="' + key + '"]');
      if (btn) pickOption(btn.dataset.head, btn.dataset.label);
    }

    function setupPicker(input) {
      const results = input.parentElement.querySelector(".picker-results");
      let found = [];
      let active = 0;
      function show() {
        found = searchCatalog(input.dataset.source, input.value, 12);
        active = 0;
        results.textContent = "";
        found.forEach((item, i) => {
          const li = document.createElement("li");
          li.textContent = item.text;
          li.dataset.index = String(i);
          if (i === active) li.className = "active";
          li.addEventListener("mousedown", (ev) => { ev.preventDefault(); choose(i); });
          results.appendChild(li);
        });
        results.hidden = !found.length;
      }
      function highlight() {
        Array.from(results.children).forEach((li, i) => li.classList.toggle("active", i === active));
      }
      function choose(i) {
        const item = found[i];
        if (!item) return;
        pickOption(input.dataset.head, item.label, input.dataset.head === "category" ? item.path : null);
        input.value = "";
        results.hidden = true;
        input.blur();
      }
      input.addEventListener("focus", () => { loadCatalog().then(show).catch((e) => toast(e.message, true)); });
      input.addEventListener("input", show);
      input.addEventListener("blur", () => { setTimeout(() => { results.hidden = true; }, 100); });
      input.addEventListener("keydown", (ev) => {
        if (ev.key === "ArrowDown") { active = Math.min(found.length - 1, active + 1); highlight(); ev.preventDefault(); }
        else if (ev.key === "ArrowUp") { active = Math.max(0, active - 1); highlight(); ev.preventDefault(); }
        else if (ev.key === "Enter") { ev.preventDefault(); ev.stopPropagation(); if (found.length) choose(active); }
        else if (ev.key === "Escape") { input.value = ""; results.hidden = true; input.blur(); }
      });
    }

    function showError(message) {
      const el = detail.querySelector("#detail-error");
      if (el) { el.textContent = message; el.hidden = false; } else { toast(message, true); }
    }

    async function confirmCase() {
      if (!state) return;
      const caseId = state.caseId;
      const address = detail.querySelector("#edit-address");
      const street = detail.querySelector("#edit-street");
      const body = {
        category: state.category, category_path: state.category_path, department: state.department,
        type: state.type, co_departments: state.co_departments, urgency: state.urgency,
        urgency_preselected: !state.urgencyPicked,
        address: address ? address.value : undefined, street: street ? street.value : "",
      };
      const btn = detail.querySelector("#confirm-btn");
      if (btn) btn.disabled = true;
      try {
        const res = await api("POST", "/api/v1/console/cases/" + encodeURIComponent(caseId) + "/confirm", body);
        toast((res.dispatched ? "已确认并派遣 " : "已确认 ") + caseId);
        await afterDecision(caseId);
      } catch (e) {
        showError(e.message);
        if (btn) btn.disabled = false;
      }
    }

    async function afterDecision(caseId) {
      const li = list.querySelector('li.item[data-case-id="' + caseId + '"]');
      const all = items();
      const index = li ? all.indexOf(li) : 0;
      if (li) li.remove();
      const rest = items();
      count.textContent = String(rest.length);
      const next = rest[Math.min(index, rest.length - 1)];
      await select(next ? next.dataset.caseId : null);
    }

    async function mergeInto(into) {
      if (!state) return;
      const caseId = state.caseId;
      try {
        await api("POST", "/api/v1/console/cases/" + encodeURIComponent(caseId) + "/merge", { into });
        toast("已将 " + caseId + " 并入 " + into);
        await afterDecision(caseId);
      } catch (e) { showError(e.message); }
    }

    async function rejectDup(candidate) {
      if (!state) return;
      const caseId = state.caseId;
      try {
        await api("POST", "/api/v1/console/cases/" + encodeURIComponent(caseId) + "/reject-duplicate", { candidate });
        toast("已标记 " + candidate + " 不是重复");
        dirty = false;
        await select(caseId);
      } catch (e) { showError(e.message); }
    }

    function move(step) {
      const all = items();
      if (!all.length) return;
      let i = all.findIndex((li) => li.dataset.caseId === selected);
      i = i < 0 ? 0 : Math.max(0, Math.min(all.length - 1, i + step));
      select(all[i].dataset.caseId);
    }

    list.addEventListener("click", (ev) => {
      const li = ev.target.closest("li.item");
      if (li) select(li.dataset.caseId);
    });

    document.addEventListener("keydown", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (ev.key === "Escape" && typing(ev.target)) { ev.target.blur(); return; }
      if (typing(ev.target)) {
        // Enter in the address or street field confirms, like everywhere else in the form.
        if (ev.key === "Enter" && (ev.target.id === "edit-address" || ev.target.id === "edit-street")) {
          ev.preventDefault();
          confirmCase();
        }
        return;
      }
      const focus = (sel) => { const el = detail.querySelector(sel); if (el) { ev.preventDefault(); el.focus(); } };
      switch (ev.key) {
        case "j": case "ArrowDown": ev.preventDefault(); move(1); break;
        case "k": case "ArrowUp": ev.preventDefault(); move(-1); break;
        case "Enter":
          if (ev.target.tagName === "BUTTON" && !ev.target.id.startsWith("confirm")) return;
          ev.preventDefault(); confirmCase(); break;
        case "/": focus("#pick-category"); break;
        case "d": focus("#pick-department"); break;
        case "c": focus("#pick-co"); break;
        case "a": focus("#edit-address"); break;
        case "u": ev.preventDefault(); cycleUrgency(); break;
        case "m": { const b = detail.querySelector("button.merge"); if (b) { ev.preventDefault(); mergeInto(b.dataset.into); } break; }
        case "x": { const b = detail.querySelector("button.reject"); if (b) { ev.preventDefault(); rejectDup(b.dataset.candidate); } break; }
        default:
          if (/^[1-9]$/.test(ev.key)) { ev.preventDefault(); pickByKey(ev.key); }
      }
    });

    // Live: every change in the feed reloads the list; the open case reloads too unless being edited.
    function connect() {
      const source = new EventSource("/api/v1/console/live");
      source.addEventListener("ready", scheduleList);
      source.addEventListener("change", (ev) => {
        let data = {};
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        scheduleList();
        if (data.case && data.case === selected && !dirty) select(selected);
      });
      source.addEventListener("error", () => {
        // EventSource retries by itself; a closed stream (e.g. logged out) is checked once.
        if (source.readyState === EventSource.CLOSED) {
          api("GET", "/api/v1/console/me").then(() => setTimeout(connect, 2000)).catch(() => {});
        }
      });
      window.addEventListener("beforeunload", () => source.close());
    }

    loadCatalog().catch(() => {});
    // ?case=ID (from 人工受理) opens that case when it waits in the queue; otherwise the first one.
    const wanted = new URLSearchParams(location.search).get("case");
    const first = items().find((li) => li.dataset.caseId === wanted) || items()[0];
    select(first ? first.dataset.caseId : null);
    connect();
    document.body.dataset.ready = "1";
  }

  // --- case page: undo a merge --------------------------------------------------------------------
  function initCase() {
    for (const btn of document.querySelectorAll("button.unmerge")) {
      btn.addEventListener("click", async () => {
        try {
          await api("POST", "/api/v1/console/cases/" + encodeURIComponent(btn.dataset.caseId) + "/unmerge");
          location.reload();
        } catch (e) {
          const el = document.getElementById("detail-error");
          el.textContent = e.message;
          el.hidden = false;
        }
      });
    }
  }

  function initSearch() {
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "/" && !typing(ev.target)) { ev.preventDefault(); document.getElementById("q").focus(); }
    });
  }

  if (page === "queue") initQueue();
  else if (page === "case") initCase();
  else if (page === "search") initSearch();
})();
