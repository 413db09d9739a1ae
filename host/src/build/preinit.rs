//! componentize-py's linking and pre-initialisation (the app's import and
//! its warm-up requests) in a child process of this binary, so an import
//! that never returns is ended at `--build-timeout`, and the memory the
//! build took goes back with the child instead of staying in a server that
//! rebuilt under `run --reload`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::{self, World};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "internal-preinit";

/// One run of componentize-py: what it links, and where the component goes.
#[derive(Debug, Args, Clone)]
pub struct Job {
    /// The WIT directory.
    #[arg(long)]
    pub wit: PathBuf,
    /// The world to build.
    #[arg(long, value_parser = config::parse_world)]
    pub world: World,
    /// componentize-py's python path, in order (index 0 is the adapter).
    #[arg(long = "python-path")]
    pub python_path: Vec<PathBuf>,
    /// The top-level module componentize-py imports.
    #[arg(long)]
    pub app_name: String,
    /// Where the component is written.
    #[arg(long)]
    pub output: PathBuf,
}

/// Why the child did not produce a component.
#[derive(Debug, thiserror::Error)]
pub enum PreinitError {
    /// componentize-py reported an error (its text, with the guest's output).
    #[error("{0}")]
    Failed(String),
    /// The child was still running at the deadline and was killed.
    #[error("did not finish within {0:?}")]
    TimedOut(Duration),
    /// The child ended without a report (a signal, or the OOM killer).
    #[error("the build process ended abnormally ({0}){1}")]
    Died(std::process::ExitStatus, String),
}

impl Job {
    /// Run the job in a child process and wait at most `limit` for it; a
    /// child still running then is killed.
    pub async fn run_bounded(&self, limit: Duration) -> Result<Result<(), PreinitError>> {
        let mut child = tokio::process::Command::new(own_executable()?);
        child
            .arg(SUBCOMMAND)
            .args(self.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the wait at the deadline kills it (SIGKILL); tokio
            // reaps it.
            .kill_on_drop(true);
        // componentize-py's own temporary directories (a 14 MB copy of the
        // stdlib among them) go inside the build's scratch directory, which
        // is removed even when the child is killed before it cleans up.
        if let Some(work) = self.output.parent() {
            let tmp = work.join("tmp");
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            child.env("TMPDIR", tmp);
        }
        let parent = rustix::process::getpid();
        // SAFETY: between fork and exec, only two raw syscalls, which
        // allocate nothing and take no lock.
        unsafe {
            child.pre_exec(move || {
                // A server that exits mid-build (SIGTERM during a
                // `--reload` rebuild) runs no destructor that would kill
                // the child: the kernel does, when the thread that started
                // it is gone. That thread is a runtime worker or the
                // rebuild's own, each living as long as the build.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                if rustix::process::getppid() != Some(parent) {
                    // The parent ended before the signal was set.
                    return Err(std::io::Error::other("the server exited"));
                }
                Ok(())
            });
        }
        let child = child
            .spawn()
            .context("starting the build's pre-initialisation process")?;
        let Ok(out) = tokio::time::timeout(limit, child.wait_with_output()).await else {
            return Ok(Err(PreinitError::TimedOut(limit)));
        };
        let out = out.context("waiting for the build's pre-initialisation process")?;
        if out.status.success() {
            return Ok(Ok(()));
        }
        let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Ok(Err(
            if out.status.code() == Some(i32::from(FAILED)) && !report.is_empty() {
                PreinitError::Failed(report)
            } else {
                let detail = [report, stderr]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("\n");
                let detail = if detail.is_empty() {
                    detail
                } else {
                    format!(":\n{detail}")
                };
                PreinitError::Died(out.status, detail)
            },
        ))
    }

    /// The child's side: run componentize-py here. Its error goes to
    /// stdout, for the parent to read, with exit status [`FAILED`].
    pub async fn run_here(&self) -> u8 {
        match self.generate().await {
            Ok(()) => 0,
            Err(e) => {
                println!("{e:#}");
                FAILED
            }
        }
    }

    async fn generate(&self) -> Result<()> {
        let wit = [self.wit.as_path()];
        let python_path: Vec<String> = self
            .python_path
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let python_path: Vec<&str> = python_path.iter().map(String::as_str).collect();
        let names = |pairs: &[(&'static str, &'static str)]| match self.world {
            World::Wsgi => std::collections::HashMap::new(),
            World::WasiHttp => pairs.iter().copied().collect(),
        };
        let (import_names, export_names) = (
            names(super::HTTP_IMPORT_NAMES),
            names(super::HTTP_EXPORT_NAMES),
        );
        componentize_py::ComponentGenerator {
            wit_paths: &wit,
            worlds: &[match self.world {
                World::Wsgi => "wsgi-app",
                World::WasiHttp => "wsgi-http",
            }],
            features: &[],
            all_features: false,
            world_module: None,
            python_path: &python_path,
            module_worlds: &[],
            app_name: &self.app_name,
            output_path: &self.output,
            add_to_linker: None,
            stub_wasi: false,
            import_interface_names: &import_names,
            export_interface_names: &export_names,
            full_names: false,
            intersect_world: None,
        }
        .generate()
        .await
    }

    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--wit".into(),
            self.wit.clone().into(),
            "--world".into(),
            self.world.name().into(),
            "--app-name".into(),
            self.app_name.clone().into(),
            "--output".into(),
            self.output.clone().into(),
        ];
        for p in &self.python_path {
            args.push("--python-path".into());
            args.push(p.clone().into());
        }
        args
    }
}

/// The child's exit status when componentize-py reported an error.
const FAILED: u8 = 3;

/// This binary, even if the file was replaced since it started (an upgrade
/// under a running `run --reload`).
fn own_executable() -> Result<PathBuf> {
    if cfg!(target_os = "linux") {
        Ok(PathBuf::from("/proc/self/exe"))
    } else {
        std::env::current_exe().context("finding this program's executable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_the_trip_through_the_command_line() {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            job: Job,
        }
        let job = Job {
            wit: "/w it".into(),
            world: World::WasiHttp,
            python_path: vec!["/a".into(), "/b c".into()],
            app_name: "entry".into(),
            output: "/o.wasm".into(),
        };
        let mut argv = vec![std::ffi::OsString::from("x")];
        argv.extend(job.to_args());
        let back = <Wrap as clap::Parser>::parse_from(argv).job;
        assert_eq!(back.wit, job.wit);
        assert_eq!(back.world, job.world);
        assert_eq!(back.python_path, job.python_path);
        assert_eq!(back.app_name, job.app_name);
        assert_eq!(back.output, job.output);
    }
}
