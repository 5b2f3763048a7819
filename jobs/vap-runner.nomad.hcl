# The shape of the job vap-orchestrator registers for each scenario (Nomad backend), written as
# HCL for reading: it is submitted as JSON through POST /v1/jobs, exactly as in
# tests/golden/nomad_job.json. Do not run this file; every value below comes from
# [orchestrator.nomad] in vap.toml.

job "vap-runner-6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10" { # vap-runner-<scenario uuid>: idempotent re-registration
  type        = "service"
  namespace   = "default"     # orchestrator.nomad.namespace
  datacenters = ["*"]         # orchestrator.nomad.datacenters

  meta {
    vap_role     = "runner"
    vap_scenario = "6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10"
  }

  group "runner" {
    count = 1

    restart {                 # in place, on the same node
      attempts = 3            # restart_attempts
      interval = "5m"         # restart_interval_secs
      delay    = "5s"         # restart_delay_secs
      mode     = "fail"       # then reschedule
    }

    disconnect {              # a client cut off may still run its allocation: no twin of it
      lost_after = "30s"      # orchestrator.host_down_after_secs
      replace    = false      # vap places the camera again itself, in a new placement epoch
      reconcile  = "keep_replacement"
    }

    reschedule {              # new allocations, possibly elsewhere; then the scenario fails
      attempts       = 2      # reschedule_attempts
      interval       = "1h"   # reschedule_interval_secs
      delay          = "5s"
      delay_function = "exponential"
      max_delay      = "5m"
      unlimited      = false
    }

    task "runner" {
      driver = "exec"         # driver: exec (isolated) | raw_exec | docker (image)

      config {
        command = "/usr/local/bin/vap-runner"   # command
        args    = ["--scenario", "6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10"]
      }

      # runner_env, then the scenario's own: nothing secret. The camera URL (credentials
      # included) and the results key are the Variable nomad/jobs/<this job>, which the
      # orchestrator writes before it registers the job; the template renders it into the
      # task's secrets dir, readable by the task only.
      env {
        VAP_KAFKA__BROKERS     = "kafka-1:9092,kafka-2:9092"
        VAP_LOG__JSON          = "true"
        VAP_RUNNER__MODELS_DIR = "/usr/local/share/vap/models"   # the clients' catalogue
        VAP_SCENARIO_UUID      = "6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10"
        VAP_SCENARIO_EPOCH     = "2026-11-24T10:00:00+00:00"
        VAP_SCENARIO_OPTIONS   = "{\"model\":\"yolov3_tiny_coco_416\",\"fps\":2.0}"
        VAP_OPTIONS_REVISION   = "3"
        VAP_JOB_SECRETS        = "file:${NOMAD_SECRETS_DIR}/vap-job.json"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/vap-runner-6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10\" }}{{ .job }}{{ end }}"
        destination = "secrets/vap-job.json"
        perms       = "0400"
        change_mode = "restart"
      }

      kill_signal  = "SIGTERM" # the runner flushes what it analysed, then exits 0
      kill_timeout = "10s"     # kill_timeout_secs

      resources {
        cpu    = 500           # cpu_mhz
        memory = 512           # memory_mb
      }
    }
  }
}
