/* surg-assets review app: login, cases with upload, the annotated player, corrections, models.
 * Plain browser JavaScript over the JSON API (/openapi.json); vendored libraries: video.js for
 * the player, Uppy (Dashboard + AwsS3 multipart + GoldenRetriever) for resumable uploads.
 * Every piece of server data is inserted with textContent (never as HTML). */
'use strict'

// The Cholec80 vocabulary (ml_models/formats/cholec80.py): class ids and phase names.
const INSTRUMENTS = ['grasper', 'bipolar', 'hook', 'scissors', 'clipper', 'irrigator', 'specimen_bag']
const PHASES = ['Preparation', 'Calot triangle dissection', 'Clipping and cutting',
  'Gallbladder dissection', 'Gallbladder packaging', 'Cleaning and coagulation', 'Gallbladder retraction']
const PALETTE = ['#e6194b', '#3cb44b', '#ffe119', '#4363d8', '#f58231', '#911eb4', '#46f0f0',
  '#f032e6', '#bcf60c', '#fabebe', '#008080', '#e6beff']
const EVENT_COLOURS = { black: '#777', colour_bars: '#d0f', scene_cut: '#fff', out_of_body: '#f80',
  burned_in_text: '#f33' }
const WINDOW_S = 60

const state = { me: null, uppy: null, player: null, refreshTimer: null, phaseNames: null }

// -- helpers -------------------------------------------------------------------------------

function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'text') node.textContent = v
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else if (k === 'dataset') Object.assign(node.dataset, v)
    else node.setAttribute(k, v === true ? '' : v)
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return node
}

// replaceChildren would turn a null (an optional part left out) into the text "null".
function setChildren (node, ...kids) {
  node.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false))
}

function toast (message) {
  const t = document.getElementById('toast')
  t.textContent = message
  t.classList.add('show')
  clearTimeout(toast.timer)
  toast.timer = setTimeout(() => t.classList.remove('show'), 3500)
}

class ApiError extends Error {
  constructor (status, message) { super(message); this.status = status }
}

async function api (method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  // Cookie-authenticated unsafe requests prove they come from this page (CSRF).
  if (method !== 'GET' && state.me && state.me.csrf_token) headers['X-CSRF-Token'] = state.me.csrf_token
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin', signal: opts.signal,
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const data = r.headers.get('content-type')?.includes('json') ? await r.json() : null
  if (!r.ok) {
    if (r.status === 401 && !opts.quiet401) { state.me = null; route() }
    throw new ApiError(r.status, (data && data.error) || `request failed (${r.status})`)
  }
  return data
}

function hms (s) {
  if (s === null || s === undefined || isNaN(s)) return ''
  s = Math.max(0, Math.floor(s))
  const h = Math.floor(s / 3600); const m = Math.floor((s % 3600) / 60); const sec = s % 60
  return [h, m, sec].map((x) => String(x).padStart(2, '0')).join(':')
}

// A phase's colour follows its place in the case's vocabulary (Cholec80's until a timeline names
// another), so the bar, the legend and the report agree.
function phaseColour (name) {
  const i = (state.phaseNames || PHASES).indexOf(name)
  return PALETTE[(i >= 0 ? i : Math.abs([...String(name)].reduce((a, c) => a * 31 + c.charCodeAt(0), 7))) % PALETTE.length]
}
const classColour = (id) => PALETTE[(Number(id) || 0) % PALETTE.length]
const canEdit = () => state.me && ['reviewer', 'admin'].includes(state.me.role)
const canUpload = () => state.me && ['surgeon', 'admin'].includes(state.me.role)
const canDecide = () => state.me && ['data_scientist', 'admin'].includes(state.me.role)

// -- routing -------------------------------------------------------------------------------

function teardown () {
  clearInterval(state.refreshTimer)
  if (state.player) { state.player.dispose(); state.player = null }
  if (state.uppy) { state.uppy.destroy(); state.uppy = null }
  state.phaseNames = null
}

async function route () {
  teardown()
  const view = document.getElementById('view')
  setChildren(view)
  if (!state.me) {
    try { state.me = await api('GET', '/api/auth/me', undefined, { quiet401: true }) } catch (e) { state.me = null }
  }
  document.getElementById('topbar').hidden = !state.me
  if (!state.me) return renderLogin(view)
  document.getElementById('whoami').textContent = `${state.me.name} (${state.me.role})`
  document.getElementById('nav-models').hidden = !canDecide()
  const hash = location.hash || '#/cases'
  const m = hash.match(/^#\/case\/(c[0-9a-f]{16})$/)
  if (m) return renderCase(view, m[1])
  if (hash === '#/models') return renderModels(view)
  return renderCases(view)
}

window.addEventListener('hashchange', route)
document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/api/auth/logout') } catch (e) { /* already logged out */ }
  state.me = null
  location.hash = '#/cases'
  route()
})

// -- login ---------------------------------------------------------------------------------

function renderLogin (view) {
  const name = el('input', { name: 'name', autocomplete: 'username', placeholder: 'user name', required: true })
  const password = el('input', { name: 'password', type: 'password', autocomplete: 'current-password', placeholder: 'password', required: true })
  const error = el('div', { class: 'error' })
  const form = el('form', { class: 'login panel', id: 'login-form' },
    el('h2', { text: 'Log in' }), name, password, el('button', { class: 'primary', type: 'submit', text: 'Log in' }), error)
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    try {
      state.me = await api('POST', '/api/auth/login', { name: name.value, password: password.value }, { quiet401: true })
      route()
    } catch (e) { error.textContent = e.message }
  })
  view.append(form)
  name.focus()
}

// -- cases ---------------------------------------------------------------------------------

function renderCases (view) {
  if (canUpload()) {
    view.append(el('section', { class: 'panel' }, el('h3', { text: 'Upload surgical videos' }),
      el('div', { id: 'uploader' })))
    setupUploader('#uploader')
  }
  const f = {
    q: el('input', { name: 'q', placeholder: 'case id' }),
    status: el('select', { name: 'status' }, el('option', { value: '', text: 'any' }),
      ...['uploading', 'queued', 'analysing', 'ready', 'failed'].map((s) => el('option', { value: s, text: s }))),
    procedure: el('input', { name: 'procedure', placeholder: 'cholecystectomy' }),
    created_from: el('input', { name: 'created_from', type: 'date' }),
    created_to: el('input', { name: 'created_to', type: 'date' }),
    instrument: el('select', { name: 'instrument' }, el('option', { value: '', text: 'any' }),
      ...INSTRUMENTS.map((s) => el('option', { value: s, text: s }))),
    phase: el('select', { name: 'phase' }, el('option', { value: '', text: 'any' }),
      ...PHASES.map((s) => el('option', { value: s, text: s }))),
    min_phase_s: el('input', { name: 'min_phase_s', type: 'number', min: 0, placeholder: 'min s' }),
    max_phase_s: el('input', { name: 'max_phase_s', type: 'number', min: 0, placeholder: 'max s' })
  }
  const labels = { q: 'search', status: 'status', procedure: 'procedure', created_from: 'from', created_to: 'to',
    instrument: 'instrument used', phase: 'phase', min_phase_s: 'phase ≥ s', max_phase_s: 'phase ≤ s' }
  const filters = el('form', { class: 'filters', id: 'case-filters' },
    ...Object.entries(f).map(([k, input]) => el('label', {}, labels[k], input)),
    el('button', { type: 'submit', text: 'Filter' }))
  const tbody = el('tbody', { id: 'case-rows' })
  const table = el('table', { id: 'cases' }, el('thead', {}, el('tr', {},
    ...['case', 'status', 'created', 'duration', 'owner', 'phases', 'instruments'].map((h) => el('th', { text: h })))), tbody)
  view.append(el('section', { class: 'panel' }, el('h3', { text: 'Cases' }), filters, table))

  async function load () {
    const params = new URLSearchParams()
    for (const [k, input] of Object.entries(f)) if (input.value) params.set(k, input.value)
    let rows
    try { rows = await api('GET', '/api/cases?' + params) } catch (e) { toast(e.message); return }
    setChildren(tbody, ...rows.map((c) => el('tr', { dataset: { case: c.id, status: c.status } },
      el('td', {}, el('a', { href: `#/case/${c.id}`, text: c.id })),
      el('td', {}, el('span', { class: `badge ${c.status}`, text: c.status }),
        c.failure_reason ? el('div', { class: 'muted', text: c.failure_reason }) : null),
      el('td', { text: (c.created_at || '').replace('T', ' ').slice(0, 16) }),
      el('td', { text: c.duration_s ? hms(c.duration_s) : '' }),
      el('td', { text: c.owner || '' }),
      el('td', { class: 'muted', text: Object.entries(c.phase_durations_s || {}).map(([p, s]) => `${p} ${hms(s)}`).join(', ') }),
      el('td', { text: (c.instruments || []).join(', ') }))))
    if (!rows.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'no cases match' })))
    // The phase filter offers Cholec80's phases and any other procedure's the listed cases show.
    const known = new Set([...f.phase.options].map((o) => o.value))
    for (const c of rows) {
      for (const p of Object.keys(c.phase_durations_s || {})) {
        if (!known.has(p)) { known.add(p); f.phase.append(el('option', { value: p, text: p })) }
      }
    }
  }
  filters.addEventListener('submit', (ev) => { ev.preventDefault(); load() })
  load()
  // Statuses move on their own (upload -> queued -> analysing -> ready): keep the list fresh.
  state.refreshTimer = setInterval(load, 5000)
  state.reloadCases = load
}

function setupUploader (target) {
  const { Uppy, Dashboard, AwsS3, GoldenRetriever } = window.SurgUppy
  const uploadCfg = state.me.upload || { part_size: 8 * 1024 * 1024, min_part_size: 65536 }
  const uppy = new Uppy({
    id: 'surg-upload',
    autoProceed: true,
    restrictions: { allowedFileTypes: ['video/*', '.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.ts', '.mts', '.mpg', '.mpeg'] }
  })
  // Uppy cuts the file before the upload exists, so the page tells the server the part size:
  // Uppy's own rule (one part up to 5 MiB, else parts of at least 5 MiB and at most 10,000 of
  // them), raised to the server's preferred size.
  const MiB = 1048576
  const partSize = (size) => size <= 5 * MiB ? size : Math.max(uploadCfg.part_size, 5 * MiB, Math.ceil(size / 10000))
  uppy.use(Dashboard, {
    inline: true, target, height: 300, width: '100%', theme: 'dark',
    showProgressDetails: true, proudlyDisplayPoweredByUppy: false,
    note: 'Videos only. Uploads resume after a dropped connection or a page reload.'
  })
  uppy.use(AwsS3, {
    shouldUseMultipart: true,
    limit: 4,
    getChunkSize: (file) => partSize(file.size),
    async createMultipartUpload (file) {
      // Only the extension of the name is used by the server; the name is never stored.
      const r = await api('POST', '/api/uploads', { name: file.name, size: file.size, type: file.type || 'application/octet-stream', part_size: partSize(file.size) })
      uppy.setFileMeta(file.id, { caseId: r.case_id })
      return { uploadId: r.upload_id, key: r.case_id }
    },
    async signPart (file, { uploadId, partNumber, signal }) {
      const r = await api('GET', `/api/uploads/${uploadId}/parts/${partNumber}`, undefined, { signal })
      return { method: 'PUT', url: r.url }
    },
    async listParts (file, { uploadId, signal }) {
      const r = await api('GET', `/api/uploads/${uploadId}`, undefined, { signal })
      return r.parts.map((p) => ({ PartNumber: p.part_number, Size: p.size, ETag: p.etag }))
    },
    async completeMultipartUpload (file, { uploadId, parts, signal }) {
      const r = await api('POST', `/api/uploads/${uploadId}/complete`,
        { parts: parts.map((p) => ({ part_number: p.PartNumber, etag: p.ETag })) }, { signal })
      return { location: `#/case/${r.case_id}` }
    },
    async abortMultipartUpload (file, { uploadId }) {
      await api('DELETE', `/api/uploads/${uploadId}`)
    }
  })
  uppy.use(GoldenRetriever, { serviceWorker: false })
  uppy.on('upload-success', (file) => {
    toast(`upload complete: case ${file.meta.caseId} is queued for analysis`)
    if (state.reloadCases) state.reloadCases()
  })
  uppy.on('upload-error', (file, error) => toast(`upload failed: ${error.message}`))
  uppy.on('upload', () => setTimeout(() => state.reloadCases && state.reloadCases(), 500))
  state.uppy = uppy
  window.surgUppy = uppy
}

// Who wrote the report, in words: "template (template-1)", "openai gpt-4o (after 2 attempts;
// template used: ...)".
function writerText (g) {
  if (!g || typeof g !== 'object') return g || 'unknown'
  const who = [g.writer, g.model].filter(Boolean).join(' ') + (g.version ? ` (${g.version})` : '')
  const extra = [g.attempts > 1 ? `after ${g.attempts} attempts` : '', g.fallback_reason ? `template used: ${g.fallback_reason}` : ''].filter(Boolean)
  return who + (extra.length ? `; ${extra.join('; ')}` : '')
}

// -- one case: the player ------------------------------------------------------------------

async function renderCase (view, caseId) {
  let c
  try { c = await api('GET', `/api/cases/${caseId}`) } catch (e) {
    view.append(el('div', { class: 'panel error', text: e.message }))
    return
  }
  const fps = c.fps || 25
  const video = el('video', { id: 'player', class: 'video-js vjs-default-skin', controls: true, preload: 'auto', playsinline: true })
  const canvas = el('canvas', { id: 'overlay' })
  const stage = el('div', { class: 'stage' }, video, canvas)
  const phasebar = el('div', { class: 'phasebar', id: 'phasebar', title: 'click to seek' })
  const eventbar = el('div', { class: 'eventbar', id: 'eventbar' })
  const legend = el('div', { class: 'legend' })
  const classSelect = el('select', { id: 'class-select', title: 'class of the selected or new box' },
    ...INSTRUMENTS.map((n, i) => el('option', { value: i, text: n })))
  const phaseSelect = el('select', { id: 'phase-select', title: 'relabel the selected phase segment' },
    ...PHASES.map((n) => el('option', { value: n, text: n })))
  const addBtn = el('button', { id: 'add-box', type: 'button', text: 'Add box' })
  const delBtn = el('button', { id: 'delete-box', type: 'button', class: 'danger', text: 'Delete box' })
  const relabelBtn = el('button', { id: 'relabel-phase', type: 'button', text: 'Relabel segment' })
  const hint = el('span', { class: 'hint', id: 'edit-hint', text: 'Pause to correct: click a box to select, drag to move, drag a corner to resize.' })
  const tools = canEdit() ? el('div', { class: 'tools panel', id: 'tools' }, classSelect, addBtn, delBtn, el('span', { text: '│' }), phaseSelect, relabelBtn, hint) : null
  const statusBadge = el('span', { class: `badge ${c.status}`, text: c.status })
  const instrumentsPanel = el('section', { class: 'panel', id: 'instruments' }, el('h3', { text: 'Instruments' }))
  const reportPanel = el('section', { class: 'panel report', id: 'report' }, el('h3', { text: 'Report' }))
  const historyPanel = el('section', { class: 'panel', id: 'history' }, el('h3', { text: 'Corrections' }))
  view.append(
    el('h2', {}, `Case ${c.id} `, statusBadge,
      c.failure_reason ? el('span', { class: 'muted', text: ` ${c.failure_reason}` }) : null),
    el('div', { class: 'case-layout' },
      el('div', {}, stage, phasebar, eventbar, legend, tools),
      el('div', {}, instrumentsPanel, reportPanel, historyPanel)))

  if (!c.video) {
    setChildren(stage, el('div', { class: 'panel muted', id: 'no-video', text: `No processed video yet (status: ${c.status}). This page refreshes when analysis finishes.` }))
    state.refreshTimer = setInterval(async () => {
      try { const n = await api('GET', `/api/cases/${caseId}`); if (n.video || n.status !== c.status) route() } catch (e) { /* shown on next load */ }
    }, 5000)
    return
  }

  const player = window.videojs(video, { controls: true, fluid: true, preload: 'auto', playbackRates: [0.5, 1, 2, 4] })
  player.src({ src: `/api/cases/${caseId}/video`, type: 'video/mp4' })
  state.player = player
  const media = () => player.el().querySelector('video')

  // -- overlay data: windows of boxes, fetched on demand ------------------------------------
  const windows = new Map()
  async function windowFor (t) {
    const w = Math.floor(t / WINDOW_S)
    if (!windows.has(w)) {
      windows.set(w, api('GET', `/api/cases/${caseId}/overlays?from_s=${w * WINDOW_S}&to_s=${(w + 1) * WINDOW_S}`).then((d) => {
        const byFrame = new Map()
        for (const b of d.boxes) { if (!byFrame.has(b.f)) byFrame.set(b.f, []); byFrame.get(b.f).push(b) }
        return { byFrame, frames: [...byFrame.keys()].sort((a, b) => a - b) }
      }).catch((e) => { windows.delete(w); throw e }))
    }
    return windows.get(w)
  }
  const ui = { selected: null, drag: null, frame: 0, t: 0, boxes: [], selectedTrack: null, adding: false }

  // The frame actually shown: requestVideoFrameCallback hands us its media time, so boxes
  // never lag behind or run ahead of the picture (timeupdate fires only ~4 times a second).
  async function boxesAt (t) {
    const frame = Math.round(t * fps)
    let win
    try { win = await windowFor(t) } catch (e) { return { frame, boxes: [] } }
    if (win.byFrame.has(frame)) return { frame, boxes: win.byFrame.get(frame) }
    // Detections may be sampled (every n-th frame): show the nearest sampled frame within 0.2 s.
    let best = null
    for (const f of win.frames) { if (Math.abs(f - frame) <= 0.2 * fps && (best === null || Math.abs(f - frame) < Math.abs(best - frame))) best = f }
    return { frame: best ?? frame, boxes: best === null ? [] : win.byFrame.get(best) }
  }

  function geometry () {
    const v = media()
    const rect = v.getBoundingClientRect(); const stageRect = stage.getBoundingClientRect()
    const vw = v.videoWidth || c.width || 1; const vh = v.videoHeight || c.height || 1
    const scale = Math.min(rect.width / vw, rect.height / vh)
    return { ox: rect.left - stageRect.left + (rect.width - vw * scale) / 2, oy: rect.top - stageRect.top + (rect.height - vh * scale) / 2, scale, rect, stageRect }
  }

  function draw () {
    const g = geometry()
    const dpr = window.devicePixelRatio || 1
    const w = Math.round(g.stageRect.width); const h = Math.round(g.rect.height)
    if (canvas.width !== w * dpr || canvas.height !== h * dpr) {
      canvas.width = w * dpr; canvas.height = h * dpr
      canvas.style.width = w + 'px'; canvas.style.height = h + 'px'
    }
    const ctx = canvas.getContext('2d')
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0)
    ctx.clearRect(0, 0, w, h)
    ctx.lineWidth = 2
    ctx.font = '12px system-ui'
    for (const b of ui.boxes) {
      const colour = classColour(b.c)
      const [x1, y1, x2, y2] = b.b.map((v, i) => (i % 2 ? g.oy : g.ox) + v * g.scale)
      if (b.m && b.m.length >= 6) {
        ctx.beginPath()
        for (let i = 0; i < b.m.length; i += 2) ctx[i ? 'lineTo' : 'moveTo'](g.ox + b.m[i] * g.scale, g.oy + b.m[i + 1] * g.scale)
        ctx.closePath(); ctx.fillStyle = colour + '55'; ctx.fill()
      }
      ctx.setLineDash(b.r ? [6, 3] : [])
      ctx.strokeStyle = colour
      const selected = ui.selected === b || (ui.selectedTrack !== null && b.k === ui.selectedTrack)
      ctx.lineWidth = selected ? 4 : 2
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1)
      const label = `${b.n ?? ''}${b.k !== null && b.k !== undefined ? ' #' + b.k : ''}${b.r ? ' ✎' : ` ${Math.round((b.p || 0) * 100)}%`}`
      ctx.fillStyle = colour; ctx.fillRect(x1, Math.max(0, y1 - 16), ctx.measureText(label).width + 8, 16)
      ctx.fillStyle = '#000'; ctx.fillText(label, x1 + 4, Math.max(12, y1 - 4))
      if (ui.selected === b) {
        ctx.fillStyle = '#fff'
        for (const [hx, hy] of [[x1, y1], [x2, y1], [x1, y2], [x2, y2]]) ctx.fillRect(hx - 4, hy - 4, 8, 8)
      }
    }
    ctx.setLineDash([])
    if (ui.drag && ui.drag.kind === 'new') {
      const d = ui.drag
      ctx.strokeStyle = '#fff'; ctx.setLineDash([4, 4])
      ctx.strokeRect(g.ox + d.box[0] * g.scale, g.oy + d.box[1] * g.scale, (d.box[2] - d.box[0]) * g.scale, (d.box[3] - d.box[1]) * g.scale)
      ctx.setLineDash([])
    }
    canvas.dataset.boxes = String(ui.boxes.length)
    canvas.dataset.frame = String(ui.frame)
  }

  async function showFrame (t) {
    const r = await boxesAt(t)
    ui.t = t; ui.frame = r.frame
    if (!ui.drag) ui.boxes = r.boxes.map((b) => ({ ...b, b: [...b.b] }))
    if (ui.selected && !ui.boxes.includes(ui.selected)) ui.selected = null
    draw()
    cursor.style.left = `${100 * t / duration()}%`
  }

  const v = media()
  const onFrame = (now, meta) => { showFrame(meta.mediaTime); v.requestVideoFrameCallback(onFrame) }
  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) v.requestVideoFrameCallback(onFrame)
  else v.addEventListener('timeupdate', () => showFrame(v.currentTime)) // older browsers only
  v.addEventListener('seeked', () => showFrame(v.currentTime))
  v.addEventListener('loadeddata', () => showFrame(v.currentTime))
  window.addEventListener('resize', draw)
  player.on('fullscreenchange', () => setTimeout(draw, 100))
  v.addEventListener('play', () => { ui.selected = null; canvas.classList.remove('editing') })
  v.addEventListener('pause', () => { if (canEdit()) canvas.classList.add('editing'); showFrame(v.currentTime) })

  // -- phase bar ---------------------------------------------------------------------------
  const duration = () => (v.duration && isFinite(v.duration) ? v.duration : (c.duration_s || 1))
  const cursor = el('div', { class: 'cursor' })
  const tl = { phases: [], correctionId: null, selected: null, vocabulary: [] }
  async function loadTimeline () {
    const d = await api('GET', `/api/cases/${caseId}/timeline`)
    tl.phases = d.phases; tl.correctionId = d.phase_correction_id
    // The phases a segment may be relabelled to are the case's own (another procedure's names
    // when its phase model was trained on them), not a fixed list.
    tl.vocabulary = d.phase_vocabulary || PHASES.map((n, i) => ({ phase_id: i, phase_name: n }))
    state.phaseNames = tl.vocabulary.map((p) => p.phase_name)
    const chosen = phaseSelect.value
    setChildren(phaseSelect, ...state.phaseNames.map((n) => el('option', { value: n, text: n })))
    if (state.phaseNames.includes(chosen)) phaseSelect.value = chosen
    renderPhasebar(d)
  }
  function renderPhasebar (d) {
    const total = duration()
    setChildren(phasebar, cursor)
    phasebar.dataset.segments = String(tl.phases.length)
    tl.phases.forEach((p, i) => {
      const seg = el('div', {
        class: 'seg' + (tl.selected === i ? ' selected' : ''), title: `${p.phase_name}: ${hms(p.start_s)}–${hms(p.end_s)}`,
        dataset: { phase: p.phase_name, index: i }
      })
      seg.style.left = `${100 * p.start_s / total}%`
      seg.style.width = `${100 * (p.end_s - p.start_s) / total}%`
      seg.style.background = phaseColour(p.phase_name)
      phasebar.append(seg)
      if (canEdit() && i > 0) {
        const handle = el('div', { class: 'handle', title: 'drag to move this phase boundary', dataset: { boundary: i } })
        handle.style.left = `${100 * p.start_s / total}%`
        handle.addEventListener('pointerdown', (ev) => startBoundaryDrag(ev, i))
        phasebar.append(handle)
      }
    })
    if (d) {
      setChildren(eventbar, ...d.events.map((e) => {
        const m = el('div', { class: 'marker', title: `${e.kind} at ${hms(e.start_s)}`, dataset: { kind: e.kind } })
        m.style.left = `${100 * e.start_s / total}%`
        m.style.width = `${Math.max(0.3, 100 * (e.end_s - e.start_s) / total)}%`
        m.style.background = EVENT_COLOURS[e.kind] || '#aaa'
        m.addEventListener('click', () => { v.currentTime = e.start_s })
        return m
      }))
      const names = [...new Set(tl.phases.map((p) => p.phase_name))]
      setChildren(legend, ...names.map((n) => el('span', {}, el('i', { style: `background:${phaseColour(n)}` }), n)),
        d.phase_source === 'review' ? el('span', { text: '(phases corrected by a reviewer)' }) : null)
    }
  }
  phasebar.addEventListener('click', (ev) => {
    if (ev.target.classList.contains('handle')) return
    const rect = phasebar.getBoundingClientRect()
    const t = (ev.clientX - rect.left) / rect.width * duration()
    v.currentTime = Math.max(0, Math.min(duration() - 0.01, t))
    const i = tl.phases.findIndex((p) => t >= p.start_s && t < p.end_s)
    tl.selected = i >= 0 ? i : null
    if (i >= 0) phaseSelect.value = tl.phases[i].phase_name
    renderPhasebar()
  })
  function startBoundaryDrag (ev, i) {
    ev.preventDefault(); ev.stopPropagation()
    const rect = phasebar.getBoundingClientRect()
    const lo = tl.phases[i - 1].start_s + 0.5; const hi = tl.phases[i].end_s - 0.5
    const move = (e) => {
      const t = Math.max(lo, Math.min(hi, (e.clientX - rect.left) / rect.width * duration()))
      tl.phases[i - 1].end_s = t; tl.phases[i].start_s = t
      renderPhasebar()
    }
    const up = async () => {
      window.removeEventListener('pointermove', move); window.removeEventListener('pointerup', up)
      await savePhases('boundary moved')
    }
    window.addEventListener('pointermove', move); window.addEventListener('pointerup', up)
  }
  async function savePhases (what) {
    const ids = new Map(tl.vocabulary.map((p) => [p.phase_name, p.phase_id]))
    const segments = tl.phases.map((p) => ({ phase_id: ids.has(p.phase_name) ? ids.get(p.phase_name) : null, phase_name: p.phase_name, start_s: +p.start_s.toFixed(3), end_s: +p.end_s.toFixed(3) }))
    try {
      await api('POST', `/api/cases/${caseId}/annotations`, { kind: 'phase', payload: { segments }, supersedes_id: tl.correctionId })
      toast(`phase correction saved (${what})`)
    } catch (e) { toast(e.message) }
    await loadTimeline(); loadHistory()
  }
  relabelBtn.addEventListener('click', () => {
    if (tl.selected === null) return toast('click a phase segment first')
    tl.phases[tl.selected].phase_name = phaseSelect.value
    savePhases('segment relabelled')
  })

  // -- box corrections on a paused frame ------------------------------------------------------
  const annotations = new Map()
  function toVideo (ev) {
    const g = geometry(); const r = canvas.getBoundingClientRect()
    return [(ev.clientX - r.left - g.ox) / g.scale, (ev.clientY - r.top - g.oy) / g.scale]
  }
  function hit (x, y) {
    const g = geometry(); const tol = 8 / g.scale
    for (const b of [...ui.boxes].reverse()) {
      const [x1, y1, x2, y2] = b.b
      const corners = [[x1, y1, 0, 1], [x2, y1, 2, 1], [x1, y2, 0, 3], [x2, y2, 2, 3]]
      for (const [cx, cy, ix, iy] of corners) if (Math.abs(x - cx) < tol && Math.abs(y - cy) < tol) return { box: b, mode: 'resize', ix, iy }
      if (x >= x1 && x <= x2 && y >= y1 && y <= y2) return { box: b, mode: 'move' }
    }
    return null
  }
  canvas.addEventListener('pointerdown', (ev) => {
    if (!canEdit() || !v.paused) return
    const [x, y] = toVideo(ev)
    if (ui.adding) {
      ui.drag = { kind: 'new', x0: x, y0: y, box: [x, y, x, y] }
    } else {
      const h = hit(x, y)
      ui.selected = h ? h.box : null
      ui.selectedTrack = null
      if (h) {
        classSelect.value = String(h.box.c ?? 0)
        ui.drag = { kind: h.mode, x0: x, y0: y, orig: [...h.box.b], ix: h.ix, iy: h.iy, box: h.box }
        showTrack(h.box)
      }
    }
    canvas.setPointerCapture(ev.pointerId)
    draw()
  })
  canvas.addEventListener('pointermove', (ev) => {
    const d = ui.drag; if (!d) return
    const [x, y] = toVideo(ev)
    if (d.kind === 'new') d.box = [Math.min(d.x0, x), Math.min(d.y0, y), Math.max(d.x0, x), Math.max(d.y0, y)]
    else if (d.kind === 'move') { const dx = x - d.x0; const dy = y - d.y0; d.box.b = [d.orig[0] + dx, d.orig[1] + dy, d.orig[2] + dx, d.orig[3] + dy] } else { d.box.b[d.ix] = x; d.box.b[d.iy] = y }
    draw()
  })
  canvas.addEventListener('pointerup', async () => {
    const d = ui.drag; ui.drag = null
    if (!d) return
    if (d.kind === 'new') {
      ui.adding = false; addBtn.classList.remove('primary')
      if (d.box[2] - d.box[0] < 3 || d.box[3] - d.box[1] < 3) return draw()
      const cls = Number(classSelect.value)
      return saveBox({ action: 'add', box: clampBox(d.box), class_id: cls, class_name: INSTRUMENTS[cls], track_id: null }, null, 'box added')
    }
    const moved = d.box.b.some((v, i) => Math.abs(v - d.orig[i]) > 0.5)
    if (!moved) return
    const b = d.box; b.b = clampBox(normalise(b.b))
    await saveBox(modifyPayload(b, d.orig, { box: b.b }), b.r, d.kind === 'move' ? 'box moved' : 'box resized')
  })
  const normalise = (bb) => [Math.min(bb[0], bb[2]), Math.min(bb[1], bb[3]), Math.max(bb[0], bb[2]), Math.max(bb[1], bb[3])]
  function clampBox (bb) {
    const W = v.videoWidth || c.width || 1e4; const H = v.videoHeight || c.height || 1e4
    return [Math.max(0, bb[0]), Math.max(0, bb[1]), Math.min(W - 0.01, bb[2]), Math.min(H - 0.01, bb[3])].map((x) => +x.toFixed(1))
  }
  function modifyPayload (b, origBox, change) {
    // A box a reviewer already made or changed: the new version keeps that correction's target.
    const prev = b.r ? annotations.get(b.r) : null
    if (prev) {
      const p = prev.payload
      return { ...p, box: p.box ?? b.b, class_id: b.c, class_name: b.n, ...change, action: change.action || (p.action === 'delete' ? 'modify' : p.action) }
    }
    return {
      action: 'modify', box: b.b, class_id: b.c, class_name: b.n, track_id: b.k ?? null,
      target: { frame_index: b.f, track_id: b.k ?? null, class_id: b.c, box: origBox },
      ...change
    }
  }
  async function saveBox (payload, supersedes, what) {
    if (payload.action === 'delete') { delete payload.box; delete payload.class_name; delete payload.class_id }
    try {
      await api('POST', `/api/cases/${caseId}/annotations`, { kind: 'box', frame_index: ui.frame, t_s: +(ui.frame / fps).toFixed(4), payload, supersedes_id: supersedes || null })
      toast(`correction saved: ${what}`)
    } catch (e) { toast(e.message) }
    windows.delete(Math.floor(ui.t / WINDOW_S))
    ui.selected = null
    await loadHistory()
    await showFrame(v.currentTime)
  }
  addBtn.addEventListener('click', () => {
    if (!v.paused) player.pause()
    ui.adding = !ui.adding; addBtn.classList.toggle('primary', ui.adding)
    canvas.classList.add('editing')
  })
  delBtn.addEventListener('click', () => {
    const b = ui.selected; if (!b) return toast('select a box first (pause, then click it)')
    const payload = b.r ? { ...modifyPayload(b, b.b, {}), action: 'delete' } : modifyPayload(b, b.b, { action: 'delete' })
    if (b.r && annotations.get(b.r)?.payload.action === 'add') payload.target = { frame_index: b.f, box: b.b }
    saveBox(payload, b.r, 'box deleted')
  })
  classSelect.addEventListener('change', () => {
    const b = ui.selected; if (!b) return
    const cls = Number(classSelect.value)
    b.c = cls; b.n = INSTRUMENTS[cls]
    saveBox(modifyPayload(b, b.b, { class_id: cls, class_name: INSTRUMENTS[cls] }), b.r, 'class changed')
  })
  document.addEventListener('keydown', (ev) => {
    if ((ev.key === 'Delete' || ev.key === 'Backspace') && ui.selected && document.activeElement.tagName !== 'INPUT') delBtn.click()
  })

  // -- instruments, report, history -----------------------------------------------------------
  let usage = null
  async function loadInstruments () {
    usage = await api('GET', `/api/cases/${caseId}/instruments`)
    const max = Math.max(1, ...usage.classes.map((k) => k.visible_s))
    setChildren(instrumentsPanel, el('h3', { text: 'Instruments' }),
      usage.classes.length
        ? el('table', {}, el('thead', {}, el('tr', {}, ...['instrument', 'visible', 'tracks', 'first', 'last', ''].map((h) => el('th', { text: h })))),
          el('tbody', {}, ...usage.classes.map((k) => el('tr', { dataset: { instrument: k.class_name } },
            el('td', {}, el('i', { style: `display:inline-block;width:10px;height:10px;background:${classColour(k.class_id)};margin-right:4px` }), k.class_name),
            el('td', { text: hms(k.visible_s) }), el('td', { text: k.tracks }),
            el('td', {}, el('a', { href: '#', onclick: (e) => { e.preventDefault(); v.currentTime = k.first_s }, text: hms(k.first_s) })),
            el('td', { text: hms(k.last_s) }),
            el('td', { style: 'width:30%' }, el('div', { class: 'usage-bar', style: `width:${100 * k.visible_s / max}%;background:${classColour(k.class_id)}` }))))))
        : el('p', { class: 'muted', text: 'No instrument detections for this case yet.' }),
      el('div', { id: 'track-detail', class: 'muted', text: 'Click a box in the video to see its track.' }))
  }
  function showTrack (b) {
    const box = document.getElementById('track-detail'); if (!box || !usage) return
    const tr = usage.tracks.find((t) => t.track_id !== null && t.track_id === b.k)
    const k = usage.classes.find((x) => x.class_name === b.n)
    ui.selectedTrack = b.k ?? null
    setChildren(box, el('strong', { text: `${b.n}${b.k !== null && b.k !== undefined ? ' track #' + b.k : ''}` }),
      tr ? el('div', { text: `on screen ${hms(tr.start_s)}–${hms(tr.end_s)}, ${tr.detections} detections, mean confidence ${Math.round(tr.mean_confidence * 100)}%` }) : null,
      k ? el('div', { text: `${b.n} overall: visible ${hms(k.visible_s)} in ${k.tracks} tracks, first ${hms(k.first_s)}, last ${hms(k.last_s)}` }) : null)
  }
  async function loadReport () {
    const d = await api('GET', `/api/cases/${caseId}/report`)
    const r = d.report
    if (!r) { setChildren(reportPanel, el('h3', { text: 'Report' }), el('p', { class: 'muted', text: 'No report yet.' })); return }
    const secs = (ts) => ts.split(':').reduce((a, x) => a * 60 + Number(x), 0)
    setChildren(reportPanel, el('h3', { text: 'Report' }),
      el('p', { text: r.procedure_summary || '' }),
      el('h4', { text: 'Key events' }),
      el('ul', {}, ...(r.key_events || []).map((e) => el('li', {},
        el('a', { href: '#', onclick: (ev) => { ev.preventDefault(); v.currentTime = secs(String(e.timestamp)) }, text: e.timestamp }), ' ', e.description || ''))),
      (r.anomalies || []).length ? el('h4', { text: 'Anomalies' }) : null,
      (r.anomalies || []).length ? el('ul', {}, ...r.anomalies.map((a) => el('li', { text: typeof a === 'string' ? a : (a.description || JSON.stringify(a)) }))) : null,
      el('p', { class: 'muted', id: 'report-writer', text: `generated by ${writerText(r.generated_by)}` }))
  }
  async function loadHistory () {
    const rows = await api('GET', `/api/cases/${caseId}/annotations`)
    annotations.clear(); for (const a of rows) annotations.set(a.id, a)
    setChildren(historyPanel, el('h3', { text: `Corrections (${rows.length})` }),
      rows.length
        ? el('table', { id: 'history-rows' }, el('tbody', {}, ...rows.slice().reverse().slice(0, 50).map((a) => el('tr', { dataset: { id: a.id } },
          el('td', { text: `#${a.id}${a.supersedes_id ? ' ← #' + a.supersedes_id : ''}` }),
          el('td', { text: a.kind === 'box' ? `${a.payload.action} ${a.payload.class_name || ''} @ ${hms(a.t_s)}` : 'phase timeline' }),
          el('td', { class: 'muted', text: `${a.author}, ${(a.created_at || '').replace('T', ' ').slice(0, 19)}${a.current ? '' : ' (superseded)'}` })))))
        : el('p', { class: 'muted', text: 'No corrections yet.' }))
  }
  await Promise.allSettled([loadTimeline(), loadInstruments(), loadReport(), loadHistory()])
  window.surgPlayer = { player, ui, draw, showFrame, tl }
}

// -- models --------------------------------------------------------------------------------

async function renderModels (view) {
  const tbody = el('tbody', { id: 'model-rows' })
  view.append(el('section', { class: 'panel' }, el('h3', { text: 'Model versions' }),
    el('table', { id: 'models' }, el('thead', {}, el('tr', {}, ...['model', 'version', 'status', 'metrics', 'dataset', 'decision', ''].map((h) => el('th', { text: h })))), tbody)))
  async function load () {
    let rows
    try { rows = await api('GET', '/api/models') } catch (e) { setChildren(tbody, el('tr', {}, el('td', { class: 'error', text: e.message }))); return }
    setChildren(tbody, ...rows.map((m) => {
      const reason = el('input', { placeholder: 'reason (needed to reject)', name: 'reason' })
      const decide = async (decision) => {
        try { await api('POST', `/api/models/${m.id}/decision`, { decision, reason: reason.value || null }); toast(`${m.name} ${m.version}: ${decision}`); load() } catch (e) { toast(e.message) }
      }
      return el('tr', { dataset: { model: `${m.name}:${m.version}`, status: m.status } },
        el('td', { text: m.name }), el('td', { text: m.version }),
        el('td', {}, el('span', { class: 'badge', text: m.status })),
        el('td', { class: 'metrics', text: Object.entries(m.metrics || {}).map(([k, x]) => `${k}=${typeof x === 'number' ? x.toFixed(3) : x}`).join('  ') }),
        el('td', { text: m.dataset_version || '' }),
        el('td', { class: 'muted', text: m.decided_by ? `${m.decided_by} ${(m.decided_at || '').slice(0, 16)}${m.reason ? ': ' + m.reason : ''}` : '' }),
        el('td', {}, reason, el('button', { class: 'primary', type: 'button', text: 'Approve', onclick: () => decide('Approved') }),
          el('button', { class: 'danger', type: 'button', text: 'Reject', onclick: () => decide('Rejected') })))
    }))
    if (!rows.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'no model versions registered' })))
  }
  load()
}

route()
