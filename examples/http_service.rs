//! The HTTP API built from the library, mounted in an actix-web app of the program's own
//! beside its own routes.
//!
//! ```sh
//! cargo run --example http_service     # then: curl http://127.0.0.1:8081/api/v1/servers
//! ```

use actix_web::{App, HttpServer, web};
use job_executor::Supervisor;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let sup = Supervisor::builder()
        .database("./http_service.db")
        .build()
        .await?;
    let state = web::Data::new(job_executor::http::AppState::new(sup.engine().clone())?);
    println!("listening on http://127.0.0.1:8081 (the API under /api/v1, ours at /hello)");
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(job_executor::http::configure)
            .route(
                "/hello",
                web::get().to(|| async { "hello from the embedding program\n" }),
            )
    })
    .bind("127.0.0.1:8081")?
    .run()
    .await?;
    sup.shutdown().await;
    Ok(())
}
