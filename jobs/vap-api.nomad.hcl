# vap-api on Nomad: several instances behind a health check (docs/DEPLOY.md).
#   nomad job run -var artifact_url=https://releases.example/vap-0.1.0-linux-amd64.tar.gz \
#     -var artifact_checksum=sha256:... -var database_host=pg.service.consul jobs/vap-api.nomad.hcl
# The database password and API token come from the Nomad variable nomad/jobs/vap-api.

variable "artifact_url" { type = string }
variable "artifact_checksum" { type = string }
variable "database_host" { type = string }
variable "count" {
  type    = number
  default = 3
}

job "vap-api" {
  type = "service"

  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    auto_revert      = true
  }

  group "api" {
    count = var.count

    network {
      port "http" {}
    }

    service {
      name     = "vap-api"
      port     = "http"
      provider = "nomad"
      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "vap-api" {
      driver = "exec"

      artifact {
        source      = var.artifact_url
        destination = "local/vap"
        options {
          checksum = var.artifact_checksum
        }
      }

      config {
        command = "local/vap/vap-api"
      }

      env {
        VAP_API__LISTEN        = "${NOMAD_ADDR_http}"
        VAP_DATABASE__HOST     = var.database_host
        VAP_LOG__JSON          = "true"
        # The model catalogue, from the tarball: checked at start, listed by /api/v1/models.
        VAP_RUNNER__MODELS_DIR = "local/vap/models"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/vap-api\" }}VAP_DATABASE__PASSWORD={{ .db_password }}\nVAP_API__AUTH_TOKEN={{ .api_token }}{{ end }}"
        destination = "secrets/vap.env"
        env         = true
      }

      # SIGTERM drains in-flight requests, then exits 0.
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      resources {
        cpu    = 500
        memory = 128
      }
    }
  }
}
