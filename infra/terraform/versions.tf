terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }

  # State backend: configure per deployment, e.g.
  #   terraform init -backend-config="bucket=my-tf-state" -backend-config="key=stlake.tfstate" ...
  # together with a `backend "s3" {}` block. Left out so `terraform init -backend=false` and local
  # state work out of the box.
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = "stlake", ManagedBy = "terraform" }, var.tags)
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  lake_bucket_name = coalesce(var.lake_bucket_name, "${var.name_prefix}-lake-${local.account_id}-${var.region}")
  logs_bucket_name = coalesce(var.logs_bucket_name, "${var.name_prefix}-logs-${local.account_id}-${var.region}")

  # Prefixes inside the lake bucket (no leading slash, one trailing slash).
  raw_prefix       = "raw/"
  lake_prefix      = "lake/"
  scratch_prefix   = "scratch/"
  artifacts_prefix = "artifacts/"
  athena_prefix    = "athena-results/"
  emr_logs_prefix  = "emr-logs/"

  lake_bucket_arn = aws_s3_bucket.lake.arn
  lake_uri        = "s3://${aws_s3_bucket.lake.id}/${trimsuffix(local.lake_prefix, "/")}"
}
