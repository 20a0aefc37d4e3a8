# GPU training node (jobs/train_clip.py streams tiles + expression from lake/). A launch template
# only: start it with `aws ec2 run-instances --launch-template ...` (README.md) when a run is due,
# terminate it afterwards. Its role reads lake/ and nothing else; checkpoints go to the encrypted
# root volume.

resource "aws_security_group" "training" {
  count = var.vpc_id == null ? 0 : 1

  name        = "${var.name_prefix}-training"
  description = "stlake GPU training node: no inbound, HTTPS out (S3, KMS, package mirrors)"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS to S3 / AWS APIs"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_launch_template" "training" {
  name                    = "${var.name_prefix}-training"
  description             = "stlake GPU training node"
  image_id                = var.training_ami_id
  instance_type           = var.training_instance_type
  ebs_optimized           = true
  update_default_version  = true
  disable_api_termination = false

  iam_instance_profile {
    arn = aws_iam_instance_profile.training.arn
  }

  # IMDSv2 only; hop limit 1 keeps containers on the node from reaching the instance credentials.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = var.training_root_device_name
    ebs {
      volume_type           = "gp3"
      volume_size           = var.training_root_volume_gb
      encrypted             = true
      kms_key_id            = aws_kms_key.lake.arn
      delete_on_termination = true
    }
  }

  network_interfaces {
    associate_public_ip_address = false
    delete_on_termination       = true
    subnet_id                   = var.training_subnet_id
    security_groups             = aws_security_group.training[*].id
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge({ Name = "${var.name_prefix}-training", Project = "stlake" }, var.tags)
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge({ Name = "${var.name_prefix}-training", Project = "stlake" }, var.tags)
  }
}
