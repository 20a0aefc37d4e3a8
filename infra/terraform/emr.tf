# Spark on EMR Serverless: no cluster to size, patch or shut down; workers exist only while a job
# runs and are billed per vCPU/GB-second. emr-7.x ships Delta Lake (/usr/share/aws/delta/lib), and
# the job's Python environment (stlake + deltalake + opencv) comes from a venv-pack archive passed
# with spark.archives (see README.md).

# Only used with emr_subnet_ids: the workers' network interfaces in your VPC need no inbound rule
# (driver <-> executor traffic stays inside EMR Serverless), only HTTPS out to AWS APIs.
resource "aws_security_group" "emr" {
  #checkov:skip=CKV2_AWS_5:Attached to aws_emrserverless_application.spark (network_configuration.security_group_ids); checkov's list of attaching resource types does not include EMR Serverless applications.
  count = length(var.emr_subnet_ids) > 0 ? 1 : 0

  name        = "${var.name_prefix}-emr-serverless"
  description = "EMR Serverless workers of ${var.name_prefix}: no inbound, HTTPS out (S3, KMS, Glue, STS)"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS to AWS APIs (S3 gateway endpoint / interface endpoints / NAT)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_emrserverless_application" "spark" {
  name          = "${var.name_prefix}-spark"
  release_label = var.emr_release_label
  type          = "spark"
  architecture  = var.emr_architecture

  maximum_capacity {
    cpu    = var.emr_max_cpu
    memory = var.emr_max_memory
    disk   = var.emr_max_disk
  }

  auto_start_configuration {
    enabled = true
  }

  auto_stop_configuration {
    enabled              = true
    idle_timeout_minutes = var.emr_idle_timeout_minutes
  }

  lifecycle {
    # (a precondition, not a variable validation: those may only reference other variables from
    # Terraform 1.9 on, and this configuration supports >= 1.5)
    precondition {
      condition     = length(var.emr_subnet_ids) == 0 || var.vpc_id != null
      error_message = "emr_subnet_ids needs vpc_id (the security group is created in that VPC)."
    }
  }

  dynamic "network_configuration" {
    for_each = length(var.emr_subnet_ids) > 0 ? [1] : []
    content {
      subnet_ids         = var.emr_subnet_ids
      security_group_ids = aws_security_group.emr[*].id
    }
  }
}
