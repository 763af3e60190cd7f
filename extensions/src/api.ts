/**
 * Client for the FedHem server extension: `{base_url}fedhem/api/{sites,catalog,policy,activity}`.
 *
 * Every request goes through `ServerConnection.makeRequest`, so the token, the XSRF cookie and the
 * server's `base_url` (on JupyterHub `/user/NAME/`) are respected.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One site of the federation as `sites` returns it. */
export interface ISite {
  name: string;
  status: string;
  datasets: string[];
}

export interface ISitesReply {
  /** Federation name, or null when the server runs with `FEDHEM_FEDERATION=none`. */
  federation: string | null;
  sites: ISite[];
}

/** One column of a dataset: its name, type and unit, never values; the range and levels its
 * sites' data stewards declare (public metadata: DP mode clips to the range, names only the levels). */
export interface IColumn {
  column: string;
  dtype: string;
  unit: string | null;
  bounds?: [number, number] | null;
  levels?: string[] | null;
  sites: string[];
}

export interface ICatalogReply {
  datasets: { [dataset: string]: IColumn[] };
}

/** DP mode: this user's budget on one dataset at one site (zCDP ρ, and ε at δ = 1e-5). */
export interface IBudget {
  rho_spent: number;
  rho_cap: number;
  rho_left: number;
  epsilon_spent: number;
  epsilon_cap: number;
}

export interface ISitePolicy {
  name: string;
  rules: string[];
  policy: { [key: string]: unknown };
  /** DP mode: this user's budget per dataset (empty when the site is not in DP mode). */
  budget?: { [dataset: string]: IBudget };
}

export interface IPolicyReply {
  sites: ISitePolicy[];
}

/** Query outcomes the kernel records, best first. */
export type Outcome = 'released' | 'suppressed' | 'refused' | 'error';

export interface IQuery {
  query_id: string;
  time: string;
  analysis: string;
  dataset: string | null;
  where: string | null;
  outcome: Outcome | string;
  sites: { [site: string]: string };
  rules: string[];
}

export interface IActivityReply {
  user: string;
  queries: IQuery[];
}

/** The server answered 404: the FedHem server extension is not loaded in this Jupyter server. */
export class ServerExtensionMissingError extends Error {
  constructor() {
    super(
      'The FedHem server extension is not running in this Jupyter server. ' +
        'Install fedhem-kernel in the environment that runs Jupyter ' +
        '(pip install fedhem-kernel) and restart Jupyter.'
    );
    this.name = 'ServerExtensionMissingError';
  }
}

/** GET `{base_url}fedhem/api/{name}` and parse the JSON reply. */
export async function requestAPI<T>(
  name: string,
  query: { [key: string]: string } = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url =
    URLExt.join(settings.baseUrl, 'fedhem', 'api', name) + URLExt.objectToQueryString(query);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = undefined;
  try {
    data = JSON.parse(text);
  } catch {
    data = undefined;
  }
  if (response.status === 404 && (data === undefined || data === null || !data.message)) {
    // Jupyter's own HTML 404 page: nobody serves fedhem/api here.
    throw new ServerExtensionMissingError();
  }
  if (response.ok && (data === undefined || data === null)) {
    throw new Error(`The FedHem server sent an unreadable reply for "${name}".`);
  }
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response, data?.message || response.statusText);
  }
  return data as T;
}
