# vap-relay on Nomad: outbox -> Kafka and Kafka results -> PostgreSQL. Two for availability and
# inbox capacity: they share the outbox with SKIP LOCKED, divide the inbox's partitions with
# advisory locks, and store each result once (docs/ARCHITECTURE.md).

variable "artifact_url" { type = string }
variable "artifact_checksum" { type = string }
variable "database_host" { type = string }
variable "kafka_brokers" { type = string } # "kafka-1:9092,kafka-2:9092"

job "vap-relay" {
  type = "service"

  group "relay" {
    count = 2

    network {
      port "metrics" {}
    }

    service {
      name     = "vap-relay"
      port     = "metrics"
      provider = "nomad"
      check {
        type     = "http"
        path     = "/metrics"
        interval = "10s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "2s"
      mode     = "delay"
    }

    task "vap-relay" {
      driver = "exec"

      artifact {
        source      = var.artifact_url
        destination = "local/vap"
        options {
          checksum = var.artifact_checksum
        }
      }

      config {
        command = "local/vap/vap-relay"
      }

      env {
        VAP_RELAY__METRICS_LISTEN = "${NOMAD_ADDR_metrics}"
        VAP_DATABASE__HOST        = var.database_host
        VAP_KAFKA__BROKERS        = var.kafka_brokers
        VAP_LOG__JSON             = "true"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/vap-relay\" }}VAP_DATABASE__PASSWORD={{ .db_password }}{{ end }}"
        destination = "secrets/vap.env"
        env         = true
      }

      # SIGTERM finishes the batch in hand, then exits 0.
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      resources {
        cpu    = 500
        memory = 128
      }
    }
  }
}
