//! nginx as the second floor: the proxy everyone already runs (Debian's
//! package), two workers, `proxy_buffering off`, HTTP/1.1 keep-alive to the
//! replay upstream, no access log. Started on a config written for the run.

use std::path::Path;
use std::process::{Command, Stdio};

use super::process::Proc;

/// The nginx binary, if installed (`apt-get install nginx`).
pub fn binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|path| Path::new(path).exists())
}

/// nginx in the foreground on `port`, proxying to the servers on `upstream_ports`
/// (least connections between them when there are several).
pub fn serve(nginx: &str, port: u16, upstream_ports: &[u16], dir: &Path) -> Proc {
    let dir = dir.join(format!("nginx-{port}"));
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let d = dir.display();
    let servers: String = upstream_ports.iter().map(|p| format!("server 127.0.0.1:{p}; ")).collect();
    let balance = if upstream_ports.len() > 1 { "least_conn; " } else { "" };
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         upstream replay {{ {balance}{servers}keepalive 512; }}\n  \
         server {{\n    listen 127.0.0.1:{port};\n    location = /health {{ return 200 'ok'; }}\n    location / {{\n      proxy_pass http://replay;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).expect("nginx.conf");
    let child = Command::new(nginx).arg("-c").arg(&file).arg("-p").arg(&dir).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("spawn nginx");
    Proc { child }
}
