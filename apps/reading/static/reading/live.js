/* The worklist and the supervisor board, live: server-sent events say when something changed (the stream's
   data is a marker of the content), and the page fetches its rows then; countdowns tick every second; a new
   STAT study raises the banner and changes the title. When EventSource fails, the page polls instead.
   The worklist is driven from the keyboard (the help overlay, "?", lists the keys). docs/worklist.md. */
(function () {
  "use strict";
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const kind = live.dataset.live;
  const target = document.getElementById(live.dataset.target);
  const rowsUrl = live.dataset.rowsUrl;
  const eventsUrl = live.dataset.eventsUrl;
  const fallbackMs = Number(live.dataset.fallbackMs) || 5000;
  const banner = document.getElementById("stat-banner");
  const status = document.getElementById("live-status");
  const baseTitle = document.title;
  let marker = live.dataset.marker;
  let clockOffset = 0; // server time minus this browser's, from the X-Server-Time-Ms of each answer
  let knownStat = statIds();
  let selectedId = null;

  function statIds() {
    return new Set(Array.from(target.querySelectorAll("[data-stat-new]"), (row) => row.dataset.assignment));
  }

  function rows() {
    return Array.from(target.querySelectorAll("tr[data-assignment]"));
  }

  // --- after every new content: countdowns, STAT banner and title, the selected row ---------------------
  function afterSwap(headers) {
    if (headers) {
      marker = headers.get("X-Worklist-Marker") || marker;
      const server = Number(headers.get("X-Server-Time-Ms"));
      if (server) clockOffset = server - Date.now();
    }
    tick();
    const now = statIds();
    const fresh = Array.from(now).some((id) => !knownStat.has(id));
    knownStat = now;
    if (fresh) {
      banner.hidden = false;
      document.title = "NEW STAT — " + baseTitle;
    } else if (now.size === 0) {
      dismiss();
    }
    if (kind === "worklist") reselect();
  }

  function dismiss() {
    banner.hidden = true;
    document.title = baseTitle;
  }
  document.getElementById("stat-banner-dismiss").addEventListener("click", dismiss);

  // --- fetching the rows -------------------------------------------------------------------------------
  let inflight = null;
  let again = false;
  let swaps = 0; // the page's own actions swap rows in too (htmx): a fetch older than one of them is stale
  function refresh() {
    if (inflight) {
      again = true;
      return inflight;
    }
    inflight = (async function () {
      const swapsBefore = swaps;
      try {
        // Background: a push-driven fetch is not the user's activity (the idle session timeout ignores it).
        const response = await fetch(rowsUrl, {
          credentials: "same-origin",
          headers: { "X-Background-Refresh": "1" },
        });
        if (response.status === 401 || response.redirected) {
          window.location.reload(); // logged out: the page reloads onto the login form
          return;
        }
        if (!response.ok) {
          retryLater();
          return;
        }
        const html = await response.text();
        if (swaps !== swapsBefore) {
          // An action's answer came in meanwhile, newer than what this fetch may show: ask again.
          again = true;
          return;
        }
        target.innerHTML = html;
        retryMs = 1000;
        if (window.htmx) window.htmx.process(target);
        afterSwap(response.headers);
      } catch (error) {
        retryLater(); // a network error
      } finally {
        inflight = null;
        if (again) {
          again = false;
          refresh();
        }
      }
    })();
    return inflight;
  }
  // A fetch that failed is tried again soon: the stream tells of a change once, and the page's marker stays
  // the one of the rows it shows, so nothing else would ask for them until the next change.
  // After 1 s, then twice as long after each failure in a row, up to the polling interval.
  let retryTimer = null;
  let retryMs = 1000;
  function retryLater() {
    if (retryTimer) return;
    retryTimer = setTimeout(function () {
      retryTimer = null;
      refresh();
    }, retryMs);
    retryMs = Math.min(retryMs * 2, fallbackMs);
  }

  // --- push, with polling when EventSource fails ---------------------------------------------------------
  const RECONNECT_GRACE_MS = 3000;
  let source = null;
  let pollTimer = null;
  let lastEvent = 0;
  function startPolling() {
    if (pollTimer) return;
    status.textContent = "Live (polling every " + Math.round(fallbackMs / 1000) + " s)";
    refresh();
    pollTimer = setInterval(refresh, fallbackMs);
  }
  function stopPolling() {
    if (!pollTimer) return;
    clearInterval(pollTimer);
    pollTimer = null;
  }
  function connect() {
    if (!window.EventSource) {
      startPolling();
      return;
    }
    source = new EventSource(eventsUrl);
    source.addEventListener("changed", function (event) {
      lastEvent = Date.now();
      stopPolling();
      status.textContent = "Live";
      // The marker becomes the event's only with the rows that carry it (afterSwap): a fetch that fails
      // leaves the page asking again, not believing it is up to date.
      if (event.data !== marker) refresh();
    });
    source.addEventListener("error", function () {
      // CLOSED: the server answered with something else than a stream (logged out, an error): poll, and
      // try the push again in a while.
      if (source.readyState === EventSource.CLOSED) {
        startPolling();
        setTimeout(connect, 30000);
        return;
      }
      // CONNECTING: the stream ended (each lasts about 30 s) and the browser reconnects by itself; the new
      // stream's first event comes at once. None within a few seconds (the network or a proxy drops the
      // stream): poll until one comes.
      const since = Date.now();
      setTimeout(function () {
        if (lastEvent < since) startPolling();
      }, RECONNECT_GRACE_MS);
    });
  }
  connect();

  // --- countdowns, every second, from each row's due time ------------------------------------------------
  function pad(n) {
    return String(n).padStart(2, "0");
  }
  function clock(seconds) {
    const abs = Math.abs(seconds);
    const h = Math.floor(abs / 3600);
    const m = Math.floor((abs % 3600) / 60);
    return (h ? h + ":" + pad(m) : String(m)) + ":" + pad(abs % 60);
  }
  function tick() {
    const now = Date.now() + clockOffset;
    document.querySelectorAll("[data-due-ms]").forEach(function (cell) {
      const left = Math.round((Number(cell.dataset.dueMs) - now) / 1000);
      cell.dataset.seconds = left;
      const label = cell.querySelector(".clock");
      label.textContent = left < 0 ? "overdue " + clock(left) : clock(left) + " left";
      const row = cell.closest("tr");
      if (left < 0 && row && !row.classList.contains("breached")) row.classList.add("breached");
    });
    document.querySelectorAll("[data-since-ms]").forEach(function (cell) {
      cell.textContent = clock(Math.round((now - Number(cell.dataset.sinceMs)) / 1000));
    });
  }
  tick(); // at once: the server rendered the due times as clock times, the countdown replaces them
  setInterval(tick, 1000);

  // --- actions through htmx keep the same bookkeeping ----------------------------------------------------
  document.body.addEventListener("htmx:afterSwap", function (event) {
    swaps += 1;
    if (window.htmx) window.htmx.process(event.detail.target); // its forms live at once, not after the settle
    const xhr = event.detail.xhr;
    afterSwap({ get: (name) => xhr.getResponseHeader(name) });
  });

  // --- the keyboard (worklist) ---------------------------------------------------------------------------
  function select(row, focus) {
    rows().forEach((r) => {
      r.classList.remove("selected");
      r.removeAttribute("aria-current");
    });
    if (!row) {
      selectedId = null;
      return;
    }
    selectedId = row.dataset.assignment;
    row.classList.add("selected");
    row.setAttribute("aria-current", "true");
    if (focus) row.focus();
    row.scrollIntoView({ block: "nearest" });
  }
  let selectedIndex = 0;
  function reselect() {
    const all = rows();
    if (selectedId === null || !all.length) return; // nothing shown (a filter): keep the choice for later
    const again = all.find((r) => r.dataset.assignment === selectedId);
    const focusHere = !document.activeElement || document.activeElement === document.body || target.contains(document.activeElement) || document.activeElement.tagName === "TR";
    select(again || all[Math.min(selectedIndex, all.length - 1)] || null, focusHere);
  }
  function move(step) {
    const all = rows();
    if (!all.length) return;
    const current = all.findIndex((r) => r.dataset.assignment === selectedId);
    const next = current < 0 ? 0 : Math.max(0, Math.min(all.length - 1, current + step));
    selectedIndex = next;
    select(all[next], true);
  }
  function act(name) {
    const row = rows().find((r) => r.dataset.assignment === selectedId);
    const button = row && row.querySelector('[data-action="' + name + '"]');
    if (!button) return;
    // htmx takes over the forms of content it swapped in only once that content settles (20 ms later, more on
    // a busy machine): a key pressed sooner would submit the form itself and reload the whole page.
    if (window.htmx) window.htmx.process(row);
    button.click();
  }
  if (kind !== "worklist") return;
  const help = document.getElementById("help");
  const search = document.getElementById("q");
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (help.open) {
      if (event.key === "?") {
        help.close();
        event.preventDefault();
      }
      return; // Esc closes the dialog by itself
    }
    const typing = event.target.closest && event.target.closest("input, select, textarea");
    if (typing) {
      if (event.key === "Escape") {
        event.preventDefault(); // Chrome would empty a search box: Esc leaves the search, it keeps it
        event.target.blur();
      }
      return;
    }
    const keys = {
      j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      a: () => act("acknowledge"), s: () => act("start"), c: () => act("complete"), o: () => act("open"),
      "/": () => search.focus(), "?": () => help.showModal(),
    };
    const handler = keys[event.key];
    if (!handler) return;
    event.preventDefault();
    handler();
  });
})();
