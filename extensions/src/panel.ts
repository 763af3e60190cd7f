/**
 * The "Federation" sidebar: sites, catalog, policy and this user's query activity.
 *
 * Plain DOM inside a Lumino widget. Every element the browser test looks for has a stable
 * `fedhem-*` class; all text from the server is set with `textContent` (never parsed as HTML).
 */
import { ServerConnection } from '@jupyterlab/services';
import { refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  IActivityReply,
  ICatalogReply,
  IColumn,
  IPolicyReply,
  IQuery,
  ISitesReply,
  requestAPI,
  ServerExtensionMissingError
} from './api';
import { federationIcon } from './icon';

/** DOM id of the sidebar widget. */
export const SIDEBAR_ID = 'fedhem-sidebar';

/** How often the activity list is refreshed while the sidebar is visible. */
export const ACTIVITY_POLL_MS = 5000;

const OUTCOMES = ['released', 'suppressed', 'refused', 'error'];

export interface IFederationPanelOptions {
  /** Server settings (base URL, token); defaults to the page's. */
  serverSettings?: ServerConnection.ISettings;
  /**
   * Insert `text` at the cursor of the active editor; returns false when there is no editor.
   * Called when a catalog column is clicked.
   */
  insertText?: (text: string) => boolean;
}

/** Create an element with a class and optional text. */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** "11:40:05" for today, otherwise a short date and time, in the browser's locale. */
export function formatTime(iso: string): string {
  const date = new Date(iso);
  if (isNaN(date.getTime())) {
    return iso;
  }
  const now = new Date();
  if (date.toDateString() === now.toDateString()) {
    return date.toLocaleTimeString();
  }
  return date.toLocaleString(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit'
  });
}

/** A column name as a Python string literal, e.g. `"os_months"`. */
export function pythonString(name: string): string {
  return JSON.stringify(name);
}

function errorText(error: unknown): string {
  if (error instanceof ServerConnection.ResponseError) {
    return `${error.response.status}: ${error.message}`;
  }
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}

/** The sidebar widget. */
export class FederationPanel extends Widget {
  constructor(options: IFederationPanelOptions = {}) {
    super();
    this.id = SIDEBAR_ID;
    this.addClass('fedhem-Sidebar');
    this.title.icon = federationIcon;
    this.title.caption = 'Federation';
    this._settings = options.serverSettings ?? ServerConnection.makeSettings();
    this._insertText = options.insertText ?? (() => false);
    this._build();
  }

  /** Re-read everything from the server. */
  async refresh(): Promise<void> {
    this._refreshButton.disabled = true;
    this.node.setAttribute('aria-busy', 'true');
    try {
      const ok = await this._loadSites();
      if (ok) {
        await Promise.all([this._loadCatalog(), this._loadPolicy(), this.refreshActivity()]);
      }
    } finally {
      this._refreshButton.disabled = false;
      this.node.removeAttribute('aria-busy');
      this._loadedOnce = true;
      this.node.dataset.loaded = 'true';
    }
  }

  /** Re-read only the activity list (cheap: polled while visible and after a cell runs). */
  async refreshActivity(): Promise<void> {
    if (this._extensionMissing) {
      return;
    }
    if (this._activityInFlight) {
      return this._activityInFlight;
    }
    this._activityInFlight = (async () => {
      try {
        const reply = await requestAPI<IActivityReply>(
          'activity',
          { limit: '50' },
          this._settings
        );
        this._renderActivity(reply);
      } catch (error) {
        this._showSectionError(this._activityBody, 'activity', error);
      } finally {
        this._activityInFlight = null;
      }
    })();
    return this._activityInFlight;
  }

  /** Refresh the activity soon (a notebook cell just finished), coalescing bursts. */
  scheduleActivityRefresh(delayMs = 400): void {
    if (this._activityTimer !== null) {
      window.clearTimeout(this._activityTimer);
    }
    this._activityTimer = window.setTimeout(() => {
      this._activityTimer = null;
      if (this.isVisible) {
        void this.refreshActivity();
      }
    }, delayMs);
  }

  dispose(): void {
    this._stopPolling();
    if (this._activityTimer !== null) {
      window.clearTimeout(this._activityTimer);
    }
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (!this._loadedOnce) {
      void this.refresh();
    } else {
      void this.refreshActivity();
    }
    this._startPolling();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._stopPolling();
  }

  private _startPolling(): void {
    if (this._pollTimer === null) {
      this._pollTimer = window.setInterval(() => {
        if (this.isVisible && !document.hidden) {
          void this.refreshActivity();
        }
      }, ACTIVITY_POLL_MS);
    }
  }

  private _stopPolling(): void {
    if (this._pollTimer !== null) {
      window.clearInterval(this._pollTimer);
      this._pollTimer = null;
    }
  }

  // ---- layout -------------------------------------------------------------------------------

  private _build(): void {
    const header = el('div', 'fedhem-header');
    const icon = el('span', 'fedhem-header-icon');
    federationIcon.element({ container: icon, height: '18px', width: '18px' });
    const heading = el('h2', 'fedhem-title', 'Federation');
    this._refreshButton = el('button', 'fedhem-refresh');
    this._refreshButton.type = 'button';
    this._refreshButton.title = 'Refresh: reload sites, catalog, policy and activity';
    this._refreshButton.setAttribute('aria-label', 'Refresh');
    refreshIcon.element({ container: this._refreshButton, height: '16px', width: '16px' });
    this._refreshButton.addEventListener('click', () => void this.refresh());
    header.append(icon, heading, this._refreshButton);
    this._federationName = el('div', 'fedhem-federation-name');

    this._message = el('div', 'fedhem-message');
    this._message.hidden = true;
    this._message.setAttribute('role', 'status');

    const body = el('div', 'fedhem-body');
    this._sitesBody = this._section(body, 'sites', 'Sites');
    this._catalogBody = this._section(body, 'catalog', 'Catalog');
    this._catalogHint = el(
      'p',
      'fedhem-hint',
      'Click a column to insert its name at the cursor of the active notebook cell.'
    );
    this._policyBody = this._section(body, 'policy', 'Policy');
    this._activityBody = this._section(body, 'activity', 'Activity');
    this._notice = el('div', 'fedhem-notice');
    this._notice.setAttribute('aria-live', 'polite');

    this.node.append(header, this._federationName, this._message, body, this._notice);
  }

  /** A collapsible section (open at first); returns the element its content goes into. */
  private _section(parent: HTMLElement, key: string, title: string): HTMLElement {
    const section = el('details', `fedhem-section fedhem-section-${key}`);
    section.open = true;
    const heading = el('summary', 'fedhem-section-title');
    heading.append(el('h3', '', title));
    const content = el('div', `fedhem-section-body fedhem-${key}-body`);
    content.append(el('p', 'fedhem-empty', 'Loading\u2026'));
    section.append(heading, content);
    parent.append(section);
    return content;
  }

  private _showMessage(kind: string | null, text = ''): void {
    this._message.className = kind ? `fedhem-message fedhem-message-${kind}` : 'fedhem-message';
    this._message.textContent = text;
    this._message.hidden = kind === null;
  }

  private _showSectionError(body: HTMLElement, what: string, error: unknown): void {
    if (error instanceof ServerExtensionMissingError) {
      this._setMissing(error);
      return;
    }
    const text = `Could not load the ${what}: ${errorText(error)}`;
    body.replaceChildren(el('p', 'fedhem-error', text));
  }

  private _setMissing(error: ServerExtensionMissingError): void {
    this._extensionMissing = true;
    this._showMessage('missing', error.message);
    this._federationName.textContent = '';
    for (const body of [this._sitesBody, this._catalogBody, this._policyBody, this._activityBody]) {
      body.replaceChildren(el('p', 'fedhem-empty', 'Not available.'));
    }
  }

  // ---- sites ---------------------------------------------------------------------------------

  /** Load the sites; false when there is nothing more to load (no server extension). */
  private async _loadSites(): Promise<boolean> {
    let reply: ISitesReply;
    try {
      reply = await requestAPI<ISitesReply>('sites', {}, this._settings);
    } catch (error) {
      if (error instanceof ServerExtensionMissingError) {
        this._setMissing(error);
        return false;
      }
      this._showMessage(null);
      this._showSectionError(this._sitesBody, 'sites', error);
      return true;
    }
    this._extensionMissing = false;
    if (reply.federation === null) {
      this._federationName.textContent = '';
      this._showMessage(
        'none',
        'No federation is configured for this Jupyter server (FEDHEM_FEDERATION=none). ' +
          'Set FEDHEM_FEDERATION=demo, or to the path of a federation .toml file, and restart ' +
          'Jupyter to see sites, catalog and policies.'
      );
    } else {
      const online = reply.sites.filter(site => site.status === 'online').length;
      this._federationName.textContent =
        `${reply.federation} \u00b7 ${online} of ${reply.sites.length} ` +
        `site${reply.sites.length === 1 ? '' : 's'} online`;
      this._federationName.dataset.federation = reply.federation;
      this._showMessage(null);
    }
    this._renderSites(reply);
    return true;
  }

  private _renderSites(reply: ISitesReply): void {
    if (reply.sites.length === 0) {
      this._sitesBody.replaceChildren(el('p', 'fedhem-empty', 'No sites.'));
      return;
    }
    const list = el('ul', 'fedhem-list fedhem-site-list');
    for (const site of reply.sites) {
      const item = el('li', 'fedhem-site');
      item.dataset.site = site.name;
      item.dataset.status = site.status;
      const status = site.status === 'online' ? 'online' : 'error';
      const line = el('div', 'fedhem-site-line');
      const dot = el('span', `fedhem-status-dot fedhem-status-${status}`);
      dot.setAttribute('aria-hidden', 'true');
      line.append(
        dot,
        el('span', 'fedhem-site-name', site.name),
        el('span', `fedhem-status-label fedhem-status-${status}`, site.status)
      );
      const datasets = el('div', 'fedhem-site-datasets');
      if (site.datasets.length === 0) {
        datasets.textContent = 'no datasets';
      }
      for (const name of site.datasets) {
        datasets.append(el('span', 'fedhem-chip fedhem-site-dataset', name));
      }
      item.append(line, datasets);
      list.append(item);
    }
    this._sitesBody.replaceChildren(list);
  }

  // ---- catalog -------------------------------------------------------------------------------

  private async _loadCatalog(): Promise<void> {
    try {
      const reply = await requestAPI<ICatalogReply>('catalog', {}, this._settings);
      this._renderCatalog(reply);
    } catch (error) {
      this._showSectionError(this._catalogBody, 'catalog', error);
    }
  }

  private _renderCatalog(reply: ICatalogReply): void {
    const names = Object.keys(reply.datasets);
    if (names.length === 0) {
      this._catalogBody.replaceChildren(el('p', 'fedhem-empty', 'No datasets.'));
      return;
    }
    // Keep the datasets the user opened across refreshes.
    const open = new Set(
      Array.from(this._catalogBody.querySelectorAll<HTMLDetailsElement>('details.fedhem-dataset'))
        .filter(d => d.open)
        .map(d => d.dataset.dataset)
    );
    const nodes: HTMLElement[] = [this._catalogHint];
    for (const name of names) {
      const columns = reply.datasets[name];
      const details = el('details', 'fedhem-dataset');
      details.dataset.dataset = name;
      details.open = open.has(name);
      const summary = el('summary', 'fedhem-dataset-summary');
      summary.append(
        el('span', 'fedhem-dataset-name', name),
        el('span', 'fedhem-count', `${columns.length} columns`)
      );
      const list = el('ul', 'fedhem-list fedhem-column-list');
      for (const column of columns) {
        list.append(this._columnItem(name, column));
      }
      details.append(summary, list);
      nodes.push(details);
    }
    this._catalogBody.replaceChildren(...nodes);
  }

  private _columnItem(dataset: string, column: IColumn): HTMLElement {
    const item = el('li', 'fedhem-column');
    item.dataset.column = column.column;
    item.dataset.dataset = dataset;
    item.tabIndex = 0;
    item.setAttribute('role', 'button');
    const where = column.sites.length ? ` \u2014 at ${column.sites.join(', ')}` : '';
    item.title = `Insert ${pythonString(column.column)} at the cursor${where}`;
    item.append(
      el('code', 'fedhem-column-name', column.column),
      el('span', 'fedhem-column-type', column.dtype)
    );
    if (column.unit) {
      item.append(el('span', 'fedhem-column-unit', column.unit));
    }
    // what the data stewards declare: DP mode clips to the range and names only these levels
    if (column.bounds) {
      const [low, high] = column.bounds;
      const range = el('span', 'fedhem-column-declared', `${low}\u2013${high}`);
      range.title = `Declared range: values are clipped to ${low}\u2013${high} in DP mode`;
      item.append(range);
    }
    if (column.levels && column.levels.length) {
      const names = column.levels.join(', ');
      const levels = el('span', 'fedhem-column-declared', `${column.levels.length} levels`);
      levels.title = `Declared levels: ${names}`;
      item.append(levels);
      item.title += ` \u2014 declared levels: ${names}`;
    }
    const insert = (): void => {
      const text = pythonString(column.column);
      if (this._insertText(text)) {
        this._notify(`Inserted ${text}.`);
      } else {
        this._notify(`Open a notebook and place the cursor in a cell to insert ${text}.`);
      }
    };
    item.addEventListener('click', insert);
    item.addEventListener('keydown', (event: KeyboardEvent) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        insert();
      }
    });
    return item;
  }

  private _notify(text: string): void {
    this._notice.textContent = text;
    if (this._noticeTimer !== null) {
      window.clearTimeout(this._noticeTimer);
    }
    this._noticeTimer = window.setTimeout(() => {
      this._notice.textContent = '';
      this._noticeTimer = null;
    }, 4000);
  }

  // ---- policy --------------------------------------------------------------------------------

  private async _loadPolicy(): Promise<void> {
    try {
      const reply = await requestAPI<IPolicyReply>('policy', {}, this._settings);
      this._renderPolicy(reply);
    } catch (error) {
      this._showSectionError(this._policyBody, 'policy', error);
    }
  }

  private _renderPolicy(reply: IPolicyReply): void {
    if (reply.sites.length === 0) {
      this._policyBody.replaceChildren(el('p', 'fedhem-empty', 'No policies.'));
      return;
    }
    const nodes = reply.sites.map(site => {
      const block = el('div', 'fedhem-policy');
      block.dataset.site = site.name;
      const rules = el('ul', 'fedhem-list fedhem-rule-list');
      for (const rule of site.rules) {
        rules.append(el('li', 'fedhem-rule', rule));
      }
      if (site.rules.length === 0) {
        rules.append(el('li', 'fedhem-rule fedhem-empty', 'No rules.'));
      }
      block.append(el('h4', 'fedhem-policy-site', site.name), rules);
      const budget = Object.entries(site.budget ?? {});
      if (budget.length > 0) {
        const list = el('ul', 'fedhem-list fedhem-budget-list');
        for (const [dataset, b] of budget) {
          const item = el(
            'li',
            'fedhem-budget',
            `${dataset}: ρ ${b.rho_spent.toPrecision(3)} of ${b.rho_cap.toPrecision(3)} spent ` +
              `(ε ${b.epsilon_spent.toFixed(2)} of ${b.epsilon_cap.toFixed(2)}); ` +
              `ρ ${b.rho_left.toPrecision(3)} left`
          );
          item.dataset.dataset = dataset;
          list.append(item);
        }
        block.append(el('h5', 'fedhem-budget-title', 'Your privacy budget (DP mode)'), list);
      }
      return block;
    });
    this._policyBody.replaceChildren(...nodes);
  }

  // ---- activity ------------------------------------------------------------------------------

  private _renderActivity(reply: IActivityReply): void {
    // Skip re-rendering an unchanged list (polled every few seconds).
    const key = JSON.stringify(reply);
    const shown = this._activityBody.querySelector('.fedhem-activity-list, .fedhem-empty');
    if (key === this._activityKey && shown) {
      return;
    }
    this._activityKey = key;
    const user = el('p', 'fedhem-activity-user');
    user.append('Queries by ', el('strong', '', reply.user), ', newest first');
    if (reply.queries.length === 0) {
      this._activityBody.replaceChildren(
        user,
        el(
          'p',
          'fedhem-empty',
          'No queries yet. Run an analysis (for example fed.describe("aml")) in a FedHem ' +
            'notebook and it appears here with its privacy outcome.'
        )
      );
      return;
    }
    const list = el('ol', 'fedhem-list fedhem-activity-list');
    for (const query of reply.queries) {
      list.append(this._activityItem(query));
    }
    this._activityBody.replaceChildren(user, list);
  }

  private _activityItem(query: IQuery): HTMLElement {
    const outcome = OUTCOMES.includes(query.outcome) ? query.outcome : 'error';
    const item = el('li', 'fedhem-activity-item');
    item.dataset.queryId = query.query_id;
    item.dataset.outcome = outcome;

    const top = el('div', 'fedhem-activity-line');
    top.append(
      el('span', `fedhem-badge fedhem-badge-${outcome}`, query.outcome),
      el('code', 'fedhem-activity-analysis', query.analysis)
    );
    if (query.dataset) {
      top.append(el('span', 'fedhem-activity-dataset', query.dataset));
    }
    const time = el('time', 'fedhem-activity-time', formatTime(query.time));
    time.dateTime = query.time;
    time.title = query.time;
    top.append(time);
    item.append(top);

    if (query.where) {
      const where = el('div', 'fedhem-activity-where');
      where.append('where ', el('code', '', query.where));
      item.append(where);
    }
    const sites = Object.entries(query.sites || {});
    if (sites.length > 0) {
      const detail = el('div', 'fedhem-activity-sites');
      for (const [site, status] of sites) {
        const chip = el('span', `fedhem-chip fedhem-activity-site fedhem-outcome-${status}`);
        chip.textContent = `${site}: ${status}`;
        chip.dataset.site = site;
        detail.append(chip);
      }
      item.append(detail);
    }
    if (query.rules && query.rules.length > 0) {
      item.append(el('div', 'fedhem-activity-rules', `rules applied: ${query.rules.join(', ')}`));
    }
    return item;
  }

  private _settings: ServerConnection.ISettings;
  private _insertText: (text: string) => boolean;
  private _federationName!: HTMLDivElement;
  private _refreshButton!: HTMLButtonElement;
  private _message!: HTMLDivElement;
  private _notice!: HTMLDivElement;
  private _sitesBody!: HTMLElement;
  private _catalogBody!: HTMLElement;
  private _catalogHint!: HTMLParagraphElement;
  private _policyBody!: HTMLElement;
  private _activityBody!: HTMLElement;
  private _activityKey = '';
  private _activityInFlight: Promise<void> | null = null;
  private _activityTimer: number | null = null;
  private _noticeTimer: number | null = null;
  private _pollTimer: number | null = null;
  private _loadedOnce = false;
  private _extensionMissing = false;
}
