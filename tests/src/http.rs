//! Minimal blocking HTTP client: reqwest's async client on a private runtime.

pub use ::reqwest::{Method, Version};

pub struct Client {
    rt: tokio::runtime::Runtime,
    client: ::reqwest::Client,
}

pub struct Req<'a> {
    rt: &'a tokio::runtime::Runtime,
    rb: ::reqwest::RequestBuilder,
}

pub struct Resp {
    pub status: u16,
    pub version: ::reqwest::Version,
    pub headers: ::reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn status(&self) -> ::reqwest::StatusCode {
        ::reqwest::StatusCode::from_u16(self.status).expect("status")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn client() -> Client {
    client_with(::reqwest::Client::builder())
}

/// A client from a customised builder (TLS roots, name resolution, ...).
pub fn client_with(builder: ::reqwest::ClientBuilder) -> Client {
    // reqwest builds a TLS config even for plain-HTTP clients.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = builder
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client");
    Client { rt, client }
}

impl Client {
    pub fn get(&self, url: &str) -> Req<'_> {
        Req {
            rt: &self.rt,
            rb: self.client.get(url),
        }
    }
    pub fn request(&self, method: ::reqwest::Method, url: &str) -> Req<'_> {
        Req {
            rt: &self.rt,
            rb: self.client.request(method, url),
        }
    }
}

impl Req<'_> {
    pub fn header(self, k: &str, v: &str) -> Self {
        Req {
            rt: self.rt,
            rb: self.rb.header(k, v),
        }
    }
    pub fn json(self, v: &serde_json::Value) -> Self {
        Req {
            rt: self.rt,
            rb: self.rb.json(v),
        }
    }
    pub fn body(self, b: impl Into<::reqwest::Body>) -> Self {
        Req {
            rt: self.rt,
            rb: self.rb.body(b),
        }
    }
    pub fn send(self) -> ::reqwest::Result<Resp> {
        self.rt.block_on(async move {
            let r = self.rb.send().await?;
            let status = r.status().as_u16();
            let version = r.version();
            let headers = r.headers().clone();
            let body = r.text().await?;
            Ok(Resp {
                status,
                version,
                headers,
                body,
            })
        })
    }
}
