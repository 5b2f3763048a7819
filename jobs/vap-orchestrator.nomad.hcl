# vap-orchestrator on Nomad, with the Nomad backend: it registers one job per scenario,
# vap-runner-<scenario uuid> (shape: jobs/vap-runner.nomad.hcl). Two instances: one leads (a
# PostgreSQL advisory lock), the other stands by and takes over within leader_poll_ms.
# Its Nomad token needs a policy allowing submit-job, read-job and list-jobs in the runners'
# namespace (docs/DEPLOY.md); it comes from the Nomad variable nomad/jobs/vap-orchestrator.

variable "artifact_url" { type = string }
variable "artifact_checksum" { type = string }
variable "database_host" { type = string }
variable "kafka_brokers" { type = string }
variable "max_workers" {
  type    = number
  default = 20
}
variable "runner_namespace" {
  type    = string
  default = "vap-runners"
}

job "vap-orchestrator" {
  type = "service"

  group "orchestrator" {
    count = 2

    network {
      port "metrics" {}
    }

    service {
      name     = "vap-orchestrator"
      port     = "metrics"
      provider = "nomad"
      check {
        type     = "http"
        path     = "/metrics"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "vap-orchestrator" {
      driver = "exec"

      artifact {
        source      = var.artifact_url
        destination = "local/vap"
        options {
          checksum = var.artifact_checksum
        }
      }

      config {
        command = "local/vap/vap-orchestrator"
      }

      env {
        VAP_ORCHESTRATOR__BACKEND          = "nomad"
        VAP_ORCHESTRATOR__MAX_WORKERS      = var.max_workers
        VAP_ORCHESTRATOR__METRICS_LISTEN   = "${NOMAD_ADDR_metrics}"
        VAP_ORCHESTRATOR__NOMAD__ADDRESS   = "http://${attr.unique.network.ip-address}:4646"
        VAP_ORCHESTRATOR__NOMAD__NAMESPACE = var.runner_namespace
        VAP_ORCHESTRATOR__NOMAD__DRIVER    = "exec"
        VAP_ORCHESTRATOR__NOMAD__COMMAND   = "/usr/local/bin/vap-runner"
        VAP_DATABASE__HOST                 = var.database_host
        VAP_KAFKA__BROKERS                 = var.kafka_brokers
        VAP_LOG__JSON                      = "true"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/vap-orchestrator\" }}VAP_DATABASE__PASSWORD={{ .db_password }}\nVAP_ORCHESTRATOR__NOMAD__TOKEN={{ .nomad_token }}{{ end }}"
        destination = "secrets/vap.env"
        env         = true
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
