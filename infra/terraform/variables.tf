variable "region" {
  description = "AWS region of every resource."
  type        = string
  default     = "us-east-1"
}

variable "name_prefix" {
  description = "Prefix of resource names (roles, application, workgroup, ...)."
  type        = string
  default     = "stlake"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name_prefix))
    error_message = "name_prefix: 2-31 chars, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags on every resource (merged into the provider's default_tags)."
  type        = map(string)
  default     = {}
}

variable "lake_bucket_name" {
  description = "Name of the lake bucket (raw/, lake/, scratch/, artifacts/, athena-results/, emr-logs/). Default: <name_prefix>-lake-<account>-<region>."
  type        = string
  default     = null
}

variable "logs_bucket_name" {
  description = "Name of the bucket receiving the lake bucket's S3 server access logs. Default: <name_prefix>-logs-<account>-<region>."
  type        = string
  default     = null
}

variable "glue_database_name" {
  description = "Glue Data Catalog database holding the lake's Delta tables."
  type        = string
  default     = "stlake"
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the KMS key is deleted after `terraform destroy`."
  type        = number
  default     = 30
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent (overwritten / deleted) object versions are removed. Must exceed the Delta log retention you rely on for time travel of old files."
  type        = number
  default     = 30
}

variable "scratch_expiration_days" {
  description = "Days after which objects under scratch/ (Spark scratch, spill, temporary files) expire."
  type        = number
  default     = 7
}

variable "athena_results_expiration_days" {
  description = "Days after which Athena query results expire."
  type        = number
  default     = 30
}

variable "logs_expiration_days" {
  description = "Days after which S3 access logs and EMR job logs expire."
  type        = number
  default     = 365
}

# --- EMR Serverless -------------------------------------------------------------------------------

variable "emr_release_label" {
  description = "EMR Serverless release (emr-7.x ships Delta Lake under /usr/share/aws/delta/lib and Python 3.9+)."
  type        = string
  default     = "emr-7.9.0"

  validation {
    condition     = can(regex("^emr-7\\.[0-9]+\\.[0-9]+$", var.emr_release_label))
    error_message = "emr_release_label must be an emr-7.x release (e.g. emr-7.9.0)."
  }
}

variable "emr_architecture" {
  description = "CPU architecture of the EMR Serverless workers; the venv-pack archive must be built for the same one (X86_64 or ARM64)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.emr_architecture)
    error_message = "emr_architecture must be X86_64 or ARM64."
  }
}

variable "emr_max_cpu" {
  description = "Upper bound of vCPUs all running jobs of the application may use together."
  type        = string
  default     = "200 vCPU"
}

variable "emr_max_memory" {
  description = "Upper bound of memory all running jobs of the application may use together."
  type        = string
  default     = "800 GB"
}

variable "emr_max_disk" {
  description = "Upper bound of disk all running jobs of the application may use together."
  type        = string
  default     = "4000 GB"
}

variable "emr_idle_timeout_minutes" {
  description = "Minutes without jobs after which the application stops (and stops billing pre-initialized capacity)."
  type        = number
  default     = 15
}

variable "vpc_id" {
  description = "VPC for the EMR Serverless workers and the training node. null: EMR Serverless runs without VPC access and the training node's security group is not created (launch it with your own)."
  type        = string
  default     = null
}

variable "emr_subnet_ids" {
  description = "Private subnets of vpc_id for EMR Serverless (need a route to S3: gateway endpoint or NAT). Empty: no VPC configuration."
  type        = list(string)
  default     = []
}

# --- GPU training node ----------------------------------------------------------------------------

variable "training_instance_type" {
  description = "Instance type of the GPU training node."
  type        = string
  default     = "g5.xlarge"
}

variable "training_ami_id" {
  description = "AMI of the training node, e.g. the current AWS Deep Learning Base OSS Nvidia Driver GPU AMI (aws ssm get-parameter --name /aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.training_ami_id))
    error_message = "training_ami_id must look like ami-0123456789abcdef0."
  }
}

variable "training_subnet_id" {
  description = "Subnet (of vpc_id) the training node's network interface is placed in. null: chosen at launch."
  type        = string
  default     = null
}

variable "training_root_volume_gb" {
  description = "Size of the training node's encrypted gp3 root volume (also holds checkpoints and the tile cache)."
  type        = number
  default     = 200
}

variable "athena_bytes_scanned_cutoff" {
  description = "Athena cancels a query of the workgroup that scans more bytes than this (guards against full scans of spots / pairs)."
  type        = number
  default     = 1099511627776 # 1 TiB
}

variable "training_root_device_name" {
  description = "Root device name of training_ami_id (/dev/sda1 for the Ubuntu Deep Learning AMIs, /dev/xvda for Amazon Linux ones)."
  type        = string
  default     = "/dev/sda1"
}
