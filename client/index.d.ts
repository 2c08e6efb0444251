// Types for caddy-wechat-login's mini-game client.

/** The part of a mini-game runtime (wx, tt, qq) the client uses. */
export interface Runtime {
  login(options: { success(result: LoginCodes): void; fail(err: { errMsg?: string }): void }): void;
  request(options: RequestOptions & { success(result: Response): void; fail(err: { errMsg?: string }): void }): void;
  getStorageSync(key: string): any;
  setStorageSync(key: string, value: any): void;
  removeStorageSync(key: string): void;
}

/** What the runtime's login answers; Douyin's tt.login adds anonymousCode and isLogin. */
export interface LoginCodes {
  code?: string;
  anonymousCode?: string;
  isLogin?: boolean;
}

export interface ClientOptions {
  /** The gateway, such as "https://game.example.com"; the token is sent there only. */
  baseURL: string;
  /** The gateway's login_path for this app. Default: the gateway's default for the runtime named ("/wx/login", "/tt/login" for "tt", "/qq/login" for "qq"); "/wx/login" for a runtime object. */
  loginPath?: string;
  /** The runtime object, or the name of its global. Default "wx". */
  runtime?: 'wx' | 'tt' | 'qq' | Runtime;
  /** The gateway's code_field. Default "code". */
  codeField?: string;
  /** The longest a login, or a request's own retries, wait on Retry-After (429, 503) in all; a longer wait rejects at once. Default 5000. */
  maxRetryWaitMs?: number;
  /** How many codes one login may spend after 401, 503 or 504. Default 3. */
  maxLoginAttempts?: number;
  /** Log in again this long before the token expires. Default 60000. */
  refreshMarginMs?: number;
  /** The clock, in milliseconds (tests). Default Date.now. */
  now?: () => number;
  /** How to wait (tests). Default setTimeout. */
  sleep?: (ms: number) => Promise<void>;
}

/** The runtime's request options; url is a path on baseURL (or a URL under it). */
export interface RequestOptions {
  url: string;
  method?: string;
  data?: any;
  header?: Record<string, string>;
  dataType?: string;
  responseType?: string;
  timeout?: number;
  /** Not used: the answer is the promise. */
  success?: never;
  fail?: never;
  complete?: never;
  [option: string]: any;
}

/** The runtime's response. */
export interface Response {
  statusCode: number;
  data: any;
  header: Record<string, string>;
  [field: string]: any;
}

export interface Session {
  token: string;
  /** When the token expires, in milliseconds of the client's clock (now): its lifetime counted from the login's answer; undefined when the token does not say. */
  expiresAt?: number;
  /** The login's answer: the backend's, or the gateway's own in respond mode ({openid, unionid?, token, expires_at}). */
  data: any;
}

export interface Client {
  /** The runtime's request with the token attached, logging in first when needed. Rejects with a GatewayError on any status of 400 or more. */
  request(options: RequestOptions): Promise<Response>;
  /** Logs in now (one login at a time, shared by every caller while it runs). */
  login(): Promise<Session>;
  /** Forgets the token, in memory and in storage; a login in flight still answers its callers but stores nothing. */
  logout(): void;
}

export type RefusalCode =
  | 'invalid_request'
  | 'invalid_code'
  | 'code_used'
  | 'invalid_session'
  | 'user_blocked'
  | 'rate_limited'
  | 'wechat_misconfigured'
  | 'wechat_bad_response'
  | 'wechat_unavailable'
  | 'wechat_timeout';

/** Codes of the module itself: no answer, a failed runtime login, a login without a token, a non-JSON error. */
export type ClientCode = 'network_error' | 'login_failed' | 'no_session' | 'http_error';

export class GatewayError extends Error {
  name: 'GatewayError';
  /** The gateway's refusal code, the backend's own "error" field, or one of ClientCode. */
  code: RefusalCode | ClientCode | string;
  /** The HTTP status; 0 when there was no answer. */
  status: number;
  /** WeChat's errcode, when the gateway gave one. */
  errcode?: number;
  /** Retry-After, in seconds, when the answer had one. */
  retryAfter?: number;
  /** The answer's body. */
  data?: any;
  /** The runtime's failure, for network_error and login_failed. */
  cause?: any;
}

export function createClient(options: ClientOptions): Client;
