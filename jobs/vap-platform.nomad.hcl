# The vap platform services on Nomad: the API (any number) and the relay (two for availability;
# they share the outbox with SKIP LOCKED and the inbox partitions safely).
# Runner jobs are not here: vap-orchestrator registers one job per scenario through the API.

variable "database_host" { type = string }
variable "kafka_brokers" { type = string }
variable "version" {
  type    = string
  default = "0.1.0"
}

job "vap-platform" {
  type = "service"

  group "api" {
    count = 2

    network {
      port "http" {}
    }

    service {
      name = "vap-api"
      port = "http"
      check {
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "vap-api" {
      driver = "raw_exec"
      config {
        command = "/usr/local/bin/vap-api"
      }
      env {
        VAP_API__LISTEN      = "${NOMAD_ADDR_http}"
        VAP_DATABASE__HOST   = var.database_host
        VAP_KAFKA__BROKERS   = var.kafka_brokers
        VAP_LOG__JSON        = "true"
      }
      # VAP_DATABASE__PASSWORD and VAP_API__AUTH_TOKEN come from a Nomad variable.
      template {
        data        = "{{ with nomadVar \"nomad/jobs/vap-platform\" }}VAP_DATABASE__PASSWORD={{ .db_password }}\nVAP_API__AUTH_TOKEN={{ .api_token }}{{ end }}"
        destination = "secrets/vap.env"
        env         = true
      }
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"
      resources {
        cpu    = 500
        memory = 128
      }
    }
  }

  group "relay" {
    count = 2

    network {
      port "metrics" {}
    }

    task "vap-relay" {
      driver = "raw_exec"
      config {
        command = "/usr/local/bin/vap-relay"
      }
      env {
        VAP_RELAY__METRICS_LISTEN = "${NOMAD_ADDR_metrics}"
        VAP_DATABASE__HOST        = var.database_host
        VAP_KAFKA__BROKERS        = var.kafka_brokers
        VAP_LOG__JSON             = "true"
      }
      template {
        data        = "{{ with nomadVar \"nomad/jobs/vap-platform\" }}VAP_DATABASE__PASSWORD={{ .db_password }}{{ end }}"
        destination = "secrets/vap.env"
        env         = true
      }
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"
      resources {
        cpu    = 500
        memory = 128
      }
    }
  }
}
